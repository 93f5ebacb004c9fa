//! Attach mode: the cloud side as an MQTT client of an external broker
//! (mosquitto, EMQX, a cluster), so the same behaviour runs on real
//! infrastructure.

use std::net::{SocketAddr, ToSocketAddrs};
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
use crate::supervise::Task;
use crate::EmulatorError;

/// Pause between reconnection attempts after the first connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// How long attach mode may take to connect and subscribe at start.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);

/// The cloud's connection to an external broker, ready to run.
pub(crate) struct Attached {
    /// The external broker's address.
    pub(crate) addr: SocketAddr,
    /// What the cloud publishes through.
    pub(crate) client: AsyncClient,
    /// Drives the connection and forwards what it hears to the cloud.
    pub(crate) task: Task,
    /// Says once whether the first connection subscribed.
    pub(crate) ready: Ready,
}

/// Whether the attached cloud connected and subscribed (see [`run`]).
pub(crate) struct Ready {
    broker: String,
    outcome: std_mpsc::Receiver<Result<(), String>>,
}

impl Ready {
    /// Waits (at most `ATTACH_TIMEOUT`) for the first connection's SUBACKs.
    pub(crate) fn wait(self) -> Result<(), EmulatorError> {
        self.outcome
            .recv_timeout(ATTACH_TIMEOUT)
            .unwrap_or_else(|_| Err("no SUBACK in time".to_string()))
            .map_err(|reason| EmulatorError::Attach {
                broker: self.broker,
                reason,
            })
    }
}

/// Prepares the cloud's client of the external broker `attach`, which
/// subscribes to `filters` and hands what it hears to `cloud`.
pub(crate) fn start(
    attach: &AttachTo,
    customer_id: u32,
    filters: Vec<String>,
    cloud: Mailbox,
) -> Result<Attached, EmulatorError> {
    let addr = (attach.host.as_str(), attach.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| EmulatorError::Attach {
            broker: attach.address(),
            reason: "the host name does not resolve".into(),
        })?;
    let (client, eventloop) = self::client(attach, customer_id)?;
    let (ready_tx, outcome) = std_mpsc::channel();
    Ok(Attached {
        addr,
        task: Box::pin(run(client.clone(), eventloop, filters, cloud, ready_tx)),
        client,
        ready: Ready {
            broker: attach.address(),
            outcome,
        },
    })
}

/// Builds the client; nothing is sent until the event loop is polled.
fn client(attach: &AttachTo, customer_id: u32) -> Result<(AsyncClient, EventLoop), EmulatorError> {
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
async fn run(
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
