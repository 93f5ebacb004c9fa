//! One client's MQTT session, from CONNECT to close: the handshake and
//! the platform's rules on it, then the packets of the session (publish,
//! subscribe, PUBACKs owed in order), deliveries, keep-alive and the will.
//! The bytes go through `connection`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, Instant};

use super::connection::{Connection, ReadError, ReadThrottle};
use super::router::min_qos;
use super::rules::{self, Violation};
use super::{valid_filter, Broker, Mailbox, Message};
use crate::limits::TokenBucket;
use crate::records::{Record, RecordKind};

/// What to do after a packet.
enum Flow {
    Continue,
    /// The client sent DISCONNECT: close without publishing the will.
    Disconnect,
    /// Close the connection (rule or protocol violation, write failure).
    Close,
}

/// Serves one client connection until it closes.
pub(crate) async fn serve<S>(stream: S, peer: std::net::SocketAddr, broker: Arc<Broker>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Connection::new(
        stream,
        broker.faults.snapshot().drop_after_bytes,
        ReadThrottle::new(&broker),
        broker.stall_timeout,
    );
    let Some(Accepted {
        client_id,
        keep_alive,
        will,
    }) = handshake(&mut conn, peer, &broker).await
    else {
        return conn.close().await;
    };

    let conn_id = broker.next_conn_id();
    let (mailbox, mut inbox, close_requested) = Mailbox::new(conn_id);
    broker.register(&client_id, mailbox.clone());
    broker.client_event(super::ClientEvent::Connected {
        client_id: client_id.clone(),
        peer,
    });
    tracing::debug!(%peer, client_id, conn_id, keep_alive, "connected");

    let mut session = Session {
        broker: broker.clone(),
        client_id: client_id.clone(),
        mailbox,
        next_pkid: 0,
        pending_acks: VecDeque::new(),
        publishes: broker
            .limits
            .publish_rate()
            .map(|rate| (rate, TokenBucket::full(rate, Instant::now().into_std()))),
        filters: HashSet::new(),
    };
    let mut clean_end = false;
    if conn
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await
        .is_ok()
    {
        // MQTT 3.1.1 §3.1.2.10: 1.5 times the keep-alive without any packet
        // from the client ends the connection. MQTT lets 0 turn the check
        // off; AWS IoT grants its maximum instead (and for longer asks).
        let keep_alive = broker.limits.granted_keep_alive(keep_alive) * 3 / 2;
        let mut last_packet = Instant::now();
        loop {
            let expiry = sleep_until(conn.heard_since(last_packet) + keep_alive);
            tokio::select! {
                _ = close_requested.notified() => {
                    tracing::debug!(client_id, conn_id, "closing on request");
                    break;
                }
                packet = conn.next_packet() => {
                    let packet = match packet {
                        Ok(packet) => packet,
                        Err(e) => {
                            if let ReadError::TooLarge(size) = e {
                                reject(&broker, Some(&client_id), "", size, &oversized(size));
                            }
                            tracing::debug!(client_id, conn_id, error = %e, "connection ends");
                            break;
                        }
                    };
                    last_packet = Instant::now();
                    match session.handle(&mut conn, packet).await {
                        Flow::Continue => {}
                        Flow::Disconnect => {
                            clean_end = true;
                            break;
                        }
                        Flow::Close => break,
                    }
                }
                Some(delivery) = inbox.recv() => {
                    if session.deliver(&mut conn, delivery.message).await.is_err() {
                        break;
                    }
                }
                stored = front_stored(&mut session.pending_acks), if !session.pending_acks.is_empty() => {
                    let Some(pkid) = stored else {
                        tracing::warn!(client_id, conn_id, "the cloud did not store a message; closing without its PUBACK");
                        break;
                    };
                    session.pending_acks.pop_front();
                    if conn.send(Packet::PubAck(PubAck::new(pkid))).await.is_err()
                        || !matches!(session.send_ready_acks(&mut conn).await, Flow::Continue)
                    {
                        break;
                    }
                }
                _ = expiry => {
                    // Reading may have been held back (byte rate) since
                    // the deadline was set; that silence is not the client's.
                    let now = Instant::now();
                    if now < conn.heard_since(last_packet) + keep_alive {
                        continue;
                    }
                    tracing::info!(client_id, conn_id, "keep-alive expired, closing");
                    break;
                }
            }
        }
    }

    broker.unregister(&client_id, conn_id);
    broker.client_event(super::ClientEvent::Disconnected {
        client_id: client_id.clone(),
        peer,
    });
    if !clean_end {
        if let Some(will) = will {
            broker.publish(will);
        }
    }
    conn.close().await;
}

/// What a CONNECT the broker accepts gives the session.
struct Accepted {
    client_id: String,
    keep_alive: u16,
    /// The will, checked against the platform's publish rules.
    will: Option<Message>,
}

/// Reads the CONNECT and applies the platform's rules to it (protocol
/// level, client id, quarantine, the will). `None`: refused (answered
/// with a CONNACK saying why where MQTT has a code for it) or never came;
/// the caller closes.
async fn handshake<S>(
    conn: &mut Connection<S>,
    peer: std::net::SocketAddr,
    broker: &Broker,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = match timeout(broker.stall_timeout, conn.next_packet()).await {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(other)) => {
            tracing::debug!(%peer, packet = ?other, "first packet is not CONNECT, closing");
            return None;
        }
        Ok(Err(e)) => {
            if let ReadError::TooLarge(size) = e {
                reject(broker, None, "", size, &oversized(size));
            }
            tracing::debug!(%peer, error = %e, "no CONNECT");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time, closing");
            return None;
        }
    };
    let client_id = connect.client_id.clone();

    if connect.protocol != Protocol::V4 {
        let _ = conn
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::RefusedProtocolVersion,
                false,
            )))
            .await;
        return None;
    }
    let allowed = match broker.is_quarantined() {
        true => Err(Violation::Quarantined),
        false => rules::check_client_id(&client_id, broker.customer_id()),
    };
    if let Err(violation) = allowed {
        tracing::info!(%peer, client_id, %violation, "refusing connection");
        reject(broker, Some(&client_id), "", 0, &violation);
        let code = match violation {
            Violation::ClientIdTooLong { .. } => ConnectReturnCode::BadClientId,
            _ => ConnectReturnCode::NotAuthorized,
        };
        let _ = conn.send(Packet::ConnAck(ConnAck::new(code, false))).await;
        return None;
    }
    let will = match connect.last_will {
        Some(will) => {
            let message = Message {
                topic: will.topic,
                payload: will.message,
                qos: will.qos,
                retain: will.retain,
            };
            if let Err(violation) = check_publish(&message) {
                reject(
                    broker,
                    Some(&client_id),
                    &message.topic,
                    message.payload.len(),
                    &violation,
                );
                return None;
            }
            Some(message)
        }
        None => None,
    };
    Some(Accepted {
        client_id,
        keep_alive: connect.keep_alive,
        will,
    })
}

struct Session {
    broker: Arc<Broker>,
    client_id: String,
    mailbox: Mailbox,
    next_pkid: u16,
    /// PUBACKs owed, in the order the publishes arrived (MQTT 3.1.1
    /// §4.6): each goes out once the cloud has stored its message, so a
    /// client that saw a PUBACK can count on the cloud having the log.
    pending_acks: VecDeque<PendingAck>,
    /// The publish rate and its bucket; `None` when it is unlimited.
    publishes: Option<(u64, TokenBucket)>,
    /// The filters this connection holds (for the subscription limit).
    filters: HashSet<String>,
}

struct PendingAck {
    pkid: u16,
    /// `None`: nothing to wait for (no cloud subscriber for the topic).
    stored: Option<oneshot::Receiver<()>>,
}

/// Waits until the oldest owed PUBACK may go: its packet id, or `None`
/// when the cloud dropped the message unstored.
async fn front_stored(acks: &mut VecDeque<PendingAck>) -> Option<u16> {
    let front = acks.front_mut()?;
    match front.stored.as_mut() {
        Some(stored) => stored.await.ok().map(|()| front.pkid),
        None => Some(front.pkid),
    }
}

impl Session {
    async fn handle<S>(&mut self, conn: &mut Connection<S>, packet: Packet) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let sent = match packet {
            Packet::Publish(publish) => return self.publish(conn, publish).await,
            Packet::PubAck(_) => Ok(()),
            Packet::Subscribe(subscribe) => return self.subscribe(conn, subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.topics {
                    self.broker.unsubscribe(self.mailbox.conn_id, filter);
                    self.filters.remove(filter);
                }
                conn.send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                    .await
            }
            Packet::PingReq => conn.send(Packet::PingResp).await,
            Packet::Disconnect => return Flow::Disconnect,
            other => {
                // QoS 2 flows, a second CONNECT, server-to-client packets.
                let violation = Violation::Protocol(format!("unexpected {}", packet_name(&other)));
                reject(&self.broker, Some(&self.client_id), "", 0, &violation);
                return Flow::Close;
            }
        };
        match sent {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn subscribe<S>(&mut self, conn: &mut Connection<S>, subscribe: Subscribe) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let limits = self.broker.limits;
        if let Some(limit) = limits.filters_per_subscribe() {
            let count = subscribe.filters.len();
            if count > limit {
                // AWS IoT hangs up on such a SUBSCRIBE (decision 7).
                let violation = Violation::TooManyFilters { count, limit };
                tracing::info!(client_id = self.client_id, %violation, "closing connection");
                reject(&self.broker, Some(&self.client_id), "", 0, &violation);
                self.broker.limit_counters.refused_filters(count);
                return Flow::Close;
            }
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for filter in &subscribe.filters {
            if !valid_filter(&filter.path) {
                codes.push(SubscribeReasonCode::Failure);
                continue;
            }
            // A filter held already is replaced, not added.
            let full = limits
                .subscriptions()
                .is_some_and(|limit| self.filters.len() >= limit);
            if full && !self.filters.contains(&filter.path) {
                let limit = limits.subscriptions().unwrap_or(usize::MAX);
                let violation = Violation::TooManySubscriptions { limit };
                tracing::debug!(client_id = self.client_id, filter = filter.path, %violation);
                reject(
                    &self.broker,
                    Some(&self.client_id),
                    &filter.path,
                    0,
                    &violation,
                );
                self.broker.limit_counters.refused_filters(1);
                codes.push(SubscribeReasonCode::Failure);
                continue;
            }
            self.filters.insert(filter.path.clone());
            // AWS IoT grants QoS 1 to a QoS 2 request.
            let granted = min_qos(filter.qos, QoS::AtLeastOnce);
            for message in self
                .broker
                .subscribe(self.mailbox.clone(), &filter.path, granted)
            {
                retained.push((message, granted));
            }
            codes.push(SubscribeReasonCode::Success(granted));
        }
        let acked = conn
            .send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            .await;
        if acked.is_err() {
            return Flow::Close;
        }
        for (message, granted) in retained {
            let qos = min_qos(message.qos, granted);
            let message = Message { qos, ..message };
            if self.deliver(conn, message).await.is_err() {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn publish<S>(&mut self, conn: &mut Connection<S>, publish: Publish) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
        };
        if let Err(violation) = check_publish(&message) {
            tracing::info!(client_id = self.client_id, %violation, "closing connection");
            reject(
                &self.broker,
                Some(&self.client_id),
                &message.topic,
                message.payload.len(),
                &violation,
            );
            return Flow::Close;
        }
        if let Some((rate, bucket)) = &mut self.publishes {
            if !bucket.try_take(1, Instant::now().into_std()) {
                // AWS IoT discards it: no routing, no PUBACK, the
                // connection stays open. Later publishes are acknowledged
                // as usual; this one simply has no PUBACK to wait for.
                let violation = Violation::PublishRate { limit: *rate };
                tracing::debug!(client_id = self.client_id, topic = message.topic, %violation);
                reject(
                    &self.broker,
                    Some(&self.client_id),
                    &message.topic,
                    message.payload.len(),
                    &violation,
                );
                self.broker.limit_counters.discarded_publish();
                return Flow::Continue;
            }
        }
        let qos = message.qos;
        let withheld = qos == QoS::AtLeastOnce
            && self
                .broker
                .faults
                .snapshot()
                .withhold_puback
                .withholds(&message.topic);
        if withheld {
            tracing::debug!(topic = message.topic, "withholding PUBACK (fault)");
        }
        // Route first: once the client sees the PUBACK, subscribers have
        // the message queued and the cloud has stored it.
        let stored = self.broker.publish(message);
        if qos == QoS::AtLeastOnce && !withheld {
            self.pending_acks.push_back(PendingAck {
                pkid: publish.pkid,
                stored,
            });
        }
        self.send_ready_acks(conn).await
    }

    /// Sends the owed PUBACKs, oldest first, up to the first whose message
    /// the cloud has not stored yet.
    async fn send_ready_acks<S>(&mut self, conn: &mut Connection<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while let Some(front) = self.pending_acks.front_mut() {
            if let Some(stored) = front.stored.as_mut() {
                match stored.try_recv() {
                    Ok(()) => {}
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        tracing::warn!(
                            client_id = self.client_id,
                            "the cloud did not store a message; closing without its PUBACK"
                        );
                        return Flow::Close;
                    }
                }
            }
            let pkid = front.pkid;
            self.pending_acks.pop_front();
            if conn.send(Packet::PubAck(PubAck::new(pkid))).await.is_err() {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    async fn deliver<S>(
        &mut self,
        conn: &mut Connection<S>,
        message: Message,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut publish = Publish::from_bytes(message.topic, message.qos, message.payload);
        publish.retain = message.retain;
        if message.qos != QoS::AtMostOnce {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            publish.pkid = self.next_pkid;
        }
        conn.send(Packet::Publish(publish)).await
    }
}

fn check_publish(message: &Message) -> Result<(), Violation> {
    if message.qos == QoS::ExactlyOnce {
        return Err(Violation::Qos2);
    }
    rules::check_topic(&message.topic)?;
    rules::check_payload(message.payload.len())
}

fn oversized(size: usize) -> Violation {
    Violation::PayloadTooLarge {
        size,
        limit: rules::MAX_PAYLOAD,
    }
}

/// Writes a `Rejected` record for a broken broker rule.
fn reject(broker: &Broker, client_id: Option<&str>, topic: &str, size: usize, why: &Violation) {
    let mut record = Record::new(RecordKind::Rejected, topic, size).rejected(why.to_string());
    record.client_id = client_id.map(str::to_string);
    // Nothing to acknowledge: a refused record is only missing from the
    // book (the store has logged why).
    let _ = broker.records.append(record);
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}
