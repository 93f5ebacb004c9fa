//! One client connection, from CONNECT to close.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::{self, Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::router::min_qos;
use super::rules::{self, Violation};
use super::{valid_filter, Broker, Mailbox, Message};
use crate::limits::TokenBucket;
use crate::records::{Record, RecordKind};

/// The largest packet the codec reads. Bigger than the platform's payload
/// limit so that an oversized publish is read whole and refused by *our*
/// rule, with a precise reason, rather than by the codec.
const READ_MAX: usize = rules::MAX_PAYLOAD * 2 + 1024;
/// The longest MQTT fixed header: a type byte and four length bytes.
const MAX_FIXED_HEADER: usize = 5;
/// The most bytes a connection's read buffer holds: one maximal packet
/// (with more, the packet before would have been complete and taken out).
const READ_BUFFER_MAX: usize = READ_MAX + MAX_FIXED_HEADER;
/// A connection's read buffer starts at this capacity when bytes arrive.
/// Between packets, once no more bytes are there to read, both buffers are
/// given back: an idle connection holds none (issue 10: memory per idle
/// connection), and reads up to this many bytes through the stack until
/// the next packet starts.
const BUFFER_INITIAL: usize = 4096;
/// A buffer that grew past this (for a large packet) is given back once
/// the packet is through, so that many idle connections which once sent
/// or received a large packet do not each keep its size.
const BUFFER_SHRINK_ABOVE: usize = 64 * 1024;
/// How long a close may take (TLS close_notify) before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes a connection held back by the byte rate waits for before it reads
/// again (or the whole bucket, if smaller): one wake-up per chunk rather
/// than one per timer tick.
const THROTTLED_READ_CHUNK: u64 = 8 * 1024;

/// Why reading the next packet failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("the client closed the connection")]
    Closed,
    #[error("read failed: {0}")]
    Io(std::io::Error),
    #[error("not MQTT 3.1.1: {0}")]
    Malformed(mqttbytes::Error),
    /// A packet whose remaining length exceeds `READ_MAX`.
    #[error("packet of {0} bytes")]
    TooLarge(usize),
    #[error("byte budget spent (drop_after_bytes fault)")]
    BudgetSpent,
    /// Part of a packet arrived, then nothing for the stall timeout.
    #[error("stalled with {buffered} bytes of a packet for {after:?}")]
    Stalled { buffered: usize, after: Duration },
}

/// The byte stream of one connection with its MQTT framing.
struct Connection<S> {
    stream: S,
    /// Holds at most one (partial) packet: `READ_BUFFER_MAX` bytes.
    read: BytesMut,
    write: BytesMut,
    received: u64,
    budget: Option<u64>,
    /// Keeps reading to the byte rate; `None` when it is unlimited.
    throttle: Option<ReadThrottle>,
    /// How long a partial packet may wait for its next byte.
    stall_timeout: Duration,
    /// When the latest bytes arrived.
    last_read: Instant,
}

/// Holds a connection's reading back to its byte rate
/// (`PlatformLimits::bytes_per_second`): AWS IoT delays, rather than
/// drops, data over the rate.
struct ReadThrottle {
    bucket: TokenBucket,
    /// The end of the latest wait for the bucket (maybe still ahead). The
    /// client cannot be heard before it, so keep-alive counts from there.
    held_until: Option<Instant>,
    broker: Arc<Broker>,
}

impl ReadThrottle {
    fn new(broker: &Arc<Broker>) -> Option<ReadThrottle> {
        let rate = broker.limits.byte_rate()?;
        Some(ReadThrottle {
            bucket: TokenBucket::full(rate, Instant::now().into_std()),
            held_until: None,
            broker: broker.clone(),
        })
    }

    /// Waits until the bucket holds a chunk; returns how many bytes may be
    /// read now. Cancel-safe: a wait once decided is kept (and counted)
    /// only once.
    async fn allowance(&mut self) -> u64 {
        loop {
            let now = Instant::now();
            if let Some(until) = self.held_until.filter(|&until| until > now) {
                sleep_until(until).await;
                continue;
            }
            let wait = self.bucket.wait_for(THROTTLED_READ_CHUNK, now.into_std());
            if wait.is_zero() {
                return self.bucket.available(now.into_std());
            }
            self.held_until = Some(now + wait);
            self.broker.limit_counters.read_delay(wait);
        }
    }

    fn consumed(&mut self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.bucket.take(bytes, Instant::now().into_std());
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(
        stream: S,
        budget: Option<u64>,
        throttle: Option<ReadThrottle>,
        stall_timeout: Duration,
    ) -> Connection<S> {
        Connection {
            stream,
            read: BytesMut::new(),
            write: BytesMut::new(),
            received: 0,
            budget,
            throttle,
            stall_timeout,
            last_read: Instant::now(),
        }
    }

    /// The next packet. Cancel-safe: bytes are only consumed from the
    /// buffer when a whole packet is returned.
    async fn next_packet(&mut self) -> Result<Packet, ReadError> {
        loop {
            let grown = self.read.capacity() > BUFFER_SHRINK_ABOVE;
            let needed = match Packet::read(&mut self.read, READ_MAX) {
                Ok(packet) => {
                    if grown {
                        // The packet's bytes were split off, but what is
                        // left still shares their allocation.
                        self.read = fresh_copy(&self.read);
                    }
                    return Ok(packet);
                }
                Err(mqttbytes::Error::InsufficientBytes(needed)) => needed,
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
                    return Err(ReadError::TooLarge(size))
                }
                Err(e) => return Err(ReadError::Malformed(e)),
            };
            if self.budget.is_some_and(|b| self.received >= b) {
                return Err(ReadError::BudgetSpent);
            }
            let allowed = match &mut self.throttle {
                Some(throttle) => throttle.allowance().await,
                None => u64::MAX,
            };
            if !self.read.is_empty() {
                make_room(&mut self.read, needed);
            }
            // Never more than one maximal packet buffered; a frame's
            // header caps it at READ_MAX, so there is always room left.
            let room = READ_BUFFER_MAX.saturating_sub(self.read.len());
            let limit = allowed.min(u64::try_from(room).unwrap_or(u64::MAX));
            // Part of a packet is here: the rest must follow in time.
            let deadline = (!self.read.is_empty())
                .then(|| self.heard_since(self.last_read) + self.stall_timeout);
            let read = std::future::poll_fn(|cx| self.poll_fill(cx, limit));
            let n = match deadline {
                None => read.await,
                Some(deadline) => match timeout_at(deadline, read).await {
                    Ok(read) => read,
                    Err(_) => {
                        return Err(ReadError::Stalled {
                            buffered: self.read.len(),
                            after: self.stall_timeout,
                        })
                    }
                },
            }
            .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Closed);
            }
            self.last_read = Instant::now();
            if let Some(throttle) = &mut self.throttle {
                throttle.consumed(n);
            }
            self.received = self.received.saturating_add(n as u64);
            if let Some(budget) = self.budget {
                if self.received > budget {
                    // Forget the bytes past the budget, as if the line had
                    // been cut right there.
                    let excess = usize::try_from(self.received - budget).unwrap_or(usize::MAX);
                    let keep = self.read.len().saturating_sub(excess);
                    self.read.truncate(keep);
                    self.received = budget;
                }
            }
        }
    }

    /// Reads at most `limit` bytes into the read buffer. With an empty
    /// buffer it holds no allocation while it waits: a read that would
    /// block gives the buffers back, and without one the bytes go through
    /// a stack chunk into a new buffer once they are there.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: u64) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() == 0 {
            let mut chunk = [MaybeUninit::<u8>::uninit(); BUFFER_INITIAL];
            let len = usize::try_from(limit).map_or(BUFFER_INITIAL, |l| l.min(BUFFER_INITIAL));
            let mut buf = ReadBuf::uninit(&mut chunk[..len]);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
            let filled = buf.filled();
            if !filled.is_empty() {
                self.read = BytesMut::with_capacity(BUFFER_INITIAL);
                self.read.extend_from_slice(filled);
            }
            return Poll::Ready(Ok(filled.len()));
        }
        let polled = {
            let mut stream = (&mut self.stream).take(limit);
            let mut read = std::pin::pin!(stream.read_buf(&mut self.read));
            read.as_mut().poll(cx)
        };
        if polled.is_pending() && self.read.is_empty() {
            self.read = BytesMut::new();
            self.write = BytesMut::new();
        }
        polled
    }

    /// Where keep-alive counts from, given the client's last packet:
    /// silence while the broker held reading back is not the client's.
    fn heard_since(&self, last_packet: Instant) -> Instant {
        match self.throttle.as_ref().and_then(|t| t.held_until) {
            Some(held_until) => held_until.max(last_packet),
            None => last_packet,
        }
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        self.write.clear();
        packet
            .write(&mut self.write, usize::MAX)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.stream.write_all(&self.write).await?;
        self.write.clear();
        shrink(&mut self.write);
        self.stream.flush().await
    }

    async fn close(mut self) {
        let _ = timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
    }
}

/// Makes room in `buf` for `needed` more bytes. A large packet gets
/// exactly its size, not the doubling that `reserve` might give.
fn make_room(buf: &mut BytesMut, needed: usize) {
    let want = buf.len().saturating_add(needed).min(READ_BUFFER_MAX);
    if buf.capacity() >= want {
        return;
    }
    if want > BUFFER_SHRINK_ABOVE {
        let mut exact = BytesMut::with_capacity(want);
        exact.extend_from_slice(buf);
        *buf = exact;
    } else {
        buf.reserve(want - buf.len());
    }
}

/// Gives back the capacity a large packet made `buf` grow to, once what
/// it holds is small again.
fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > BUFFER_SHRINK_ABOVE && buf.len() <= BUFFER_INITIAL {
        *buf = fresh_copy(buf);
    }
}

/// `buf`'s bytes in an allocation of their own (of the initial capacity,
/// or their length if more).
fn fresh_copy(buf: &BytesMut) -> BytesMut {
    let mut fresh = BytesMut::with_capacity(BUFFER_INITIAL.max(buf.len()));
    fresh.extend_from_slice(buf);
    fresh
}

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
    let connect = match timeout(broker.stall_timeout, conn.next_packet()).await {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(other)) => {
            tracing::debug!(%peer, packet = ?other, "first packet is not CONNECT, closing");
            return conn.close().await;
        }
        Ok(Err(e)) => {
            if let ReadError::TooLarge(size) = e {
                reject(&broker, None, "", size, &oversized(size));
            }
            tracing::debug!(%peer, error = %e, "no CONNECT");
            return conn.close().await;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time, closing");
            return conn.close().await;
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
        return conn.close().await;
    }
    let allowed = match broker.is_quarantined() {
        true => Err(Violation::Quarantined),
        false => rules::check_client_id(&client_id, broker.customer_id()),
    };
    if let Err(violation) = allowed {
        tracing::info!(%peer, client_id, %violation, "refusing connection");
        reject(&broker, Some(&client_id), "", 0, &violation);
        let code = match violation {
            Violation::ClientIdTooLong { .. } => ConnectReturnCode::BadClientId,
            _ => ConnectReturnCode::NotAuthorized,
        };
        let _ = conn.send(Packet::ConnAck(ConnAck::new(code, false))).await;
        return conn.close().await;
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
                    &broker,
                    Some(&client_id),
                    &message.topic,
                    message.payload.len(),
                    &violation,
                );
                return conn.close().await;
            }
            Some(message)
        }
        None => None,
    };

    let conn_id = broker.next_conn_id();
    let (mailbox, mut inbox, close_requested) = Mailbox::new(conn_id);
    broker.register(&client_id, mailbox.clone());
    broker.client_event(super::ClientEvent::Connected {
        client_id: client_id.clone(),
        peer,
    });
    tracing::debug!(%peer, client_id, conn_id, keep_alive = connect.keep_alive, "connected");

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
        let keep_alive = broker.limits.granted_keep_alive(connect.keep_alive) * 3 / 2;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    use super::*;

    const STALL: Duration = Duration::from_millis(200);

    fn connection() -> (DuplexStream, Connection<DuplexStream>) {
        let (client, server) = duplex(64 * 1024);
        (client, Connection::new(server, None, None, STALL))
    }

    /// A QoS 0 PUBLISH of `payload` bytes, encoded.
    fn publish(payload: usize) -> BytesMut {
        let publish = Publish::new("t/x", QoS::AtMostOnce, vec![7u8; payload]);
        let mut out = BytesMut::new();
        Packet::Publish(publish)
            .write(&mut out, usize::MAX)
            .unwrap();
        out
    }

    /// Writes `bytes` in the background (the pipe holds 64 KiB) and keeps
    /// the client's end open until the test ends.
    fn send(mut client: DuplexStream, bytes: BytesMut) -> tokio::task::JoinHandle<DuplexStream> {
        tokio::spawn(async move {
            client.write_all(&bytes).await.unwrap();
            client
        })
    }

    #[tokio::test]
    async fn after_a_large_packet_the_read_buffer_gives_its_capacity_back() {
        let (client, mut conn) = connection();
        let mut bytes = publish(rules::MAX_PAYLOAD);
        bytes.extend_from_slice(&publish(10));
        let _client = send(client, bytes);
        match conn.next_packet().await.unwrap() {
            Packet::Publish(p) => {
                assert_eq!(p.payload.len(), rules::MAX_PAYLOAD);
                // The buffer no longer shares the packet's allocation:
                // it goes when the payload does.
                assert!(p.payload.is_unique(), "the read buffer keeps the packet");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            conn.read.capacity() <= BUFFER_SHRINK_ABOVE,
            "{} bytes kept",
            conn.read.capacity()
        );
        match conn.next_packet().await.unwrap() {
            Packet::Publish(p) => assert_eq!(p.payload.len(), 10),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer_and_reads_on_when_bytes_come() {
        let (mut client, mut conn) = connection();
        let mut bytes = publish(10);
        bytes.extend_from_slice(&publish(20));
        client.write_all(&bytes).await.unwrap();
        conn.send(Packet::PubAck(PubAck::new(1))).await.unwrap();
        for len in [10, 20] {
            match conn.next_packet().await.unwrap() {
                Packet::Publish(p) => assert_eq!(p.payload.len(), len),
                other => panic!("{other:?}"),
            }
        }
        // Nothing more to read: one poll finds that out and gives both
        // buffers back.
        {
            let mut next = std::pin::pin!(conn.next_packet());
            let polled = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "{polled:?}");
        }
        assert_eq!(conn.read.capacity(), 0);
        assert_eq!(conn.write.capacity(), 0);
        // Bytes arrive again: a small packet, then one larger than the
        // stack chunk, then a small one again.
        let _client = send(client, {
            let mut bytes = publish(5);
            bytes.extend_from_slice(&publish(3 * BUFFER_INITIAL));
            bytes.extend_from_slice(&publish(7));
            bytes
        });
        for len in [5, 3 * BUFFER_INITIAL, 7] {
            match conn.next_packet().await.unwrap() {
                Packet::Publish(p) => {
                    assert_eq!(p.payload.len(), len);
                    assert!(p.payload.iter().all(|&b| b == 7));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_large_delivery_leaves_the_write_buffer_small() {
        let (mut client, mut conn) = connection();
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            client.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        let publish = Publish::new("t/x", QoS::AtMostOnce, vec![7u8; rules::MAX_PAYLOAD]);
        conn.send(Packet::Publish(publish)).await.unwrap();
        assert!(conn.write.capacity() <= BUFFER_SHRINK_ABOVE);
        drop(conn);
        assert!(reader.await.unwrap() > rules::MAX_PAYLOAD);
    }

    #[tokio::test]
    async fn a_packet_left_half_sent_is_given_up_after_the_stall_timeout() {
        let (client, mut conn) = connection();
        let mut bytes = publish(100 * 1024);
        bytes.truncate(bytes.len() / 2);
        let sent = bytes.len();
        let _client = send(client, bytes);
        let started = Instant::now();
        match conn.next_packet().await {
            Err(ReadError::Stalled { buffered, .. }) => assert_eq!(buffered, sent),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= STALL);
    }

    #[tokio::test]
    async fn at_most_one_maximal_packet_is_buffered() {
        let (client, mut conn) = connection();
        // A header announcing the largest packet read, then all of it but
        // its last byte.
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&[0x30]);
        let mut len = READ_MAX;
        loop {
            let byte = u8::try_from(len % 128).unwrap();
            len /= 128;
            if len == 0 {
                bytes.extend_from_slice(&[byte]);
                break;
            }
            bytes.extend_from_slice(&[byte | 0x80]);
        }
        bytes.extend_from_slice(&[0, 3, b't', b'/', b'x']);
        let full = bytes.len() - 5 + READ_MAX;
        bytes.resize(full - 1, 7);
        let _client = send(client, bytes);
        match conn.next_packet().await {
            Err(ReadError::Stalled { buffered, .. }) => assert_eq!(buffered, full - 1),
            other => panic!("{other:?}"),
        }
        assert!(
            conn.read.capacity() <= READ_BUFFER_MAX,
            "{} bytes of capacity for a {READ_BUFFER_MAX}-byte packet",
            conn.read.capacity()
        );
    }

    #[tokio::test]
    async fn a_packet_over_the_read_maximum_is_refused_from_its_header() {
        let (client, mut conn) = connection();
        let mut bytes = BytesMut::new();
        // 0x30, remaining length READ_MAX + 1 = more than fits.
        let mut len = READ_MAX + 1;
        bytes.extend_from_slice(&[0x30]);
        loop {
            let byte = u8::try_from(len % 128).unwrap();
            len /= 128;
            if len == 0 {
                bytes.extend_from_slice(&[byte]);
                break;
            }
            bytes.extend_from_slice(&[byte | 0x80]);
        }
        let _client = send(client, bytes);
        assert!(matches!(
            conn.next_packet().await,
            Err(ReadError::TooLarge(_))
        ));
        assert!(conn.read.capacity() <= BUFFER_INITIAL);
    }
}
