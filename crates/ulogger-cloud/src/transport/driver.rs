//! The task that owns the connection and its MQTT session state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    Packet, PubAck, Publish, Subscribe, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior};

use super::backoff::Backoff;
use super::connect::{self, Stream, MAX_INCOMING_PACKET};
use super::{Command, Done, Link, Message, Shared};
use crate::config::Settings;
use crate::error::{Error, ErrorKind, Phase};

/// Writes are batched up to about this many bytes before hitting the socket.
const WRITE_BATCH: usize = 256 * 1024;

/// A publish handed to us and not yet acknowledged.
struct Inflight {
    /// Order of arrival, so re-sends keep the callers' order.
    seq: u64,
    topic: String,
    payload: Bytes,
    done: Done,
}

/// A subscription some callers hold.
struct Subscription {
    holders: usize,
    granted: bool,
    waiters: Vec<Done>,
}

/// How a connection ended.
enum End {
    /// Shut down on request, after draining.
    Closed,
    /// Lost; reconnect.
    Lost(Error),
}

pub(crate) struct Driver {
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    inflight: HashMap<u16, Inflight>,
    next_seq: u64,
    subscriptions: HashMap<String, Subscription>,
    /// SUBSCRIBE packet id -> filter, until its SUBACK.
    pending_subacks: HashMap<u16, String>,
    last_pkid: u16,
    closing: bool,
}

impl Driver {
    pub fn new(
        settings: Arc<Settings>,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        Driver {
            settings,
            shared,
            commands,
            commands_open: true,
            inflight: HashMap::new(),
            next_seq: 0,
            subscriptions: HashMap::new(),
            pending_subacks: HashMap::new(),
            last_pkid: 0,
            closing: false,
        }
    }

    pub async fn run(mut self) {
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut backoff = Backoff::default();
        let mut last_attempt: Option<Instant> = None;
        let broker = self.settings.broker();
        while !*shutdown.borrow_and_update() {
            if let Some(previous) = last_attempt {
                tokio::select! {
                    () = sleep_until(previous + backoff.next_delay()) => {}
                    _ = shutdown.changed() => continue,
                }
            }
            last_attempt = Some(Instant::now());
            tracing::debug!(%broker, client_id = %self.settings.client_id, "connecting");
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let attempt = timeout(
                self.settings.connect_timeout,
                connect::open(&self.settings, &mut buf),
            )
            .await;
            let stream = match attempt {
                Ok(Ok(stream)) => stream,
                Ok(Err(failure)) => {
                    tracing::warn!(%broker, error = %failure.error, source = ?std::error::Error::source(&failure.error), "connection attempt failed");
                    backoff.failed();
                    self.set_link(Link::Connecting {
                        last_error: Some(failure.error),
                        permanent: failure.permanent,
                    });
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%broker, "connection attempt timed out");
                    backoff.failed();
                    self.set_link(Link::Connecting {
                        last_error: Some(ErrorKind::Timeout(Phase::Connect).into()),
                        permanent: false,
                    });
                    continue;
                }
            };
            tracing::info!(%broker, client_id = %self.settings.client_id, "connected");
            backoff.succeeded();
            self.set_link(Link::Connected);
            match self.serve(stream, buf, &mut shutdown).await {
                End::Closed => break,
                End::Lost(error) => {
                    tracing::warn!(%broker, %error, unacknowledged = self.inflight.len(), "connection lost; reconnecting");
                    self.set_link(Link::Connecting {
                        last_error: Some(error),
                        permanent: false,
                    });
                }
            }
        }
        self.fail_everything();
        self.set_link(Link::Closed);
    }

    fn set_link(&self, link: Link) {
        self.shared.link.send_replace(link);
    }

    /// Ends every pending operation with `Shutdown`: nothing is dropped
    /// without its caller hearing of it.
    fn fail_everything(&mut self) {
        let shutdown = || Err(Error::from(ErrorKind::Shutdown));
        for (_, entry) in self.inflight.drain() {
            let _ = entry.done.send(shutdown());
        }
        for (_, sub) in self.subscriptions.drain() {
            for waiter in sub.waiters {
                let _ = waiter.send(shutdown());
            }
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Publish { done, .. } | Command::Subscribe { done, .. } => {
                    let _ = done.send(shutdown());
                }
                Command::Unsubscribe { .. } => {}
            }
        }
    }

    async fn serve(
        &mut self,
        stream: Box<dyn Stream>,
        buf: BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let (reader, mut writer) = tokio::io::split(stream);
        let (packets_tx, mut packets) = mpsc::unbounded_channel();
        // The reader runs apart so that the broker can always deliver to
        // us, even while we are blocked writing a large batch to it.
        let reader = AbortOnDrop(tokio::spawn(read_packets(reader, buf, packets_tx)));
        let mut out = BytesMut::with_capacity(64 * 1024);
        self.restore_session(&mut out);

        let keep_alive = Duration::from_secs(u64::from(self.settings.keep_alive));
        let ping_period = if keep_alive.is_zero() {
            Duration::from_secs(u64::MAX / 4)
        } else {
            keep_alive
        };
        let mut ping = interval_at(Instant::now() + ping_period, ping_period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let mut close_deadline = Instant::now() + Duration::from_secs(u64::MAX / 4);

        let end = loop {
            if !out.is_empty() {
                if let Err(e) = write_out(&mut writer, &mut out).await {
                    break End::Lost(e);
                }
            }
            if self.closing
                && !self.commands_open
                && self.inflight.is_empty()
                && self.pending_subacks.is_empty()
            {
                break End::Closed;
            }
            let window_open = self.inflight.len() < usize::from(self.settings.max_inflight);
            tokio::select! {
                packet = packets.recv() => match packet {
                    Some(Ok(packet)) => {
                        if let Err(e) = self.incoming(packet, &mut out, &mut awaiting_pong) {
                            break End::Lost(e);
                        }
                    }
                    Some(Err(e)) => break End::Lost(e),
                    None => break End::Lost(ErrorKind::ConnectionLost.into()),
                },
                command = self.commands.recv(), if self.commands_open && window_open => {
                    match command {
                        Some(command) => {
                            self.command(command, &mut out);
                            // Take whatever else is queued, so one write
                            // carries a batch of publishes.
                            while out.len() < WRITE_BATCH
                                && self.inflight.len() < usize::from(self.settings.max_inflight)
                            {
                                match self.commands.try_recv() {
                                    Ok(command) => self.command(command, &mut out),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => self.commands_open = false,
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        break End::Lost(Error::with_source(
                            ErrorKind::ConnectionLost,
                            "no PINGRESP within the keep-alive interval",
                        ));
                    }
                    encode(&Packet::PingReq, &mut out);
                    awaiting_pong = true;
                }
                _ = shutdown.changed(), if !self.closing => {
                    // Take no new work; finish what was handed over.
                    self.closing = true;
                    self.commands.close();
                    close_deadline = Instant::now() + self.settings.ack_timeout;
                }
                () = sleep_until(close_deadline), if self.closing => break End::Closed,
            }
        };
        if matches!(end, End::Closed) {
            encode(&Packet::Disconnect, &mut out);
            let _ = write_out(&mut writer, &mut out).await;
            let _ = writer.shutdown().await;
        }
        drop(reader);
        // Subscriptions must be granted again on the next connection.
        self.pending_subacks.clear();
        for sub in self.subscriptions.values_mut() {
            sub.granted = false;
        }
        end
    }

    /// After (re)connecting: subscribe again to everything held, and
    /// re-send every publish that was not acknowledged, in order.
    fn restore_session(&mut self, out: &mut BytesMut) {
        let filters: Vec<String> = self.subscriptions.keys().cloned().collect();
        for filter in filters {
            self.send_subscribe(filter, out);
        }
        // Callers that gave up on a publish were told it failed; sending it
        // now would only duplicate what they will retry.
        self.inflight.retain(|_, entry| !entry.done.is_closed());
        let mut resend: Vec<(u16, u64)> = self
            .inflight
            .iter()
            .map(|(pkid, entry)| (*pkid, entry.seq))
            .collect();
        resend.sort_by_key(|(_, seq)| *seq);
        if !resend.is_empty() {
            tracing::info!(count = resend.len(), "re-sending unacknowledged publishes");
        }
        for (pkid, _) in resend {
            if let Some(entry) = self.inflight.get(&pkid) {
                let mut publish = Publish::from_bytes(
                    entry.topic.clone(),
                    QoS::AtLeastOnce,
                    entry.payload.clone(),
                );
                publish.pkid = pkid;
                publish.dup = true;
                encode(&Packet::Publish(publish), out);
            }
        }
    }

    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let id = self.last_pkid;
            if !self.inflight.contains_key(&id) && !self.pending_subacks.contains_key(&id) {
                return id;
            }
        }
    }

    fn send_subscribe(&mut self, filter: String, out: &mut BytesMut) {
        let pkid = self.next_pkid();
        let mut subscribe = Subscribe::new(filter.clone(), QoS::AtLeastOnce);
        subscribe.pkid = pkid;
        encode(&Packet::Subscribe(subscribe), out);
        self.pending_subacks.insert(pkid, filter);
    }

    fn command(&mut self, command: Command, out: &mut BytesMut) {
        match command {
            Command::Publish {
                topic,
                payload,
                done,
            } => {
                if done.is_closed() {
                    return; // the caller gave up before it was sent
                }
                let pkid = self.next_pkid();
                let mut publish =
                    Publish::from_bytes(topic.clone(), QoS::AtLeastOnce, payload.clone());
                publish.pkid = pkid;
                encode(&Packet::Publish(publish), out);
                self.next_seq += 1;
                self.inflight.insert(
                    pkid,
                    Inflight {
                        seq: self.next_seq,
                        topic,
                        payload,
                        done,
                    },
                );
            }
            Command::Subscribe { filter, done } => match self.subscriptions.get_mut(&filter) {
                Some(sub) => {
                    sub.holders += 1;
                    if sub.granted {
                        let _ = done.send(Ok(()));
                    } else {
                        sub.waiters.push(done);
                    }
                }
                None => {
                    self.subscriptions.insert(
                        filter.clone(),
                        Subscription {
                            holders: 1,
                            granted: false,
                            waiters: vec![done],
                        },
                    );
                    self.send_subscribe(filter, out);
                }
            },
            Command::Unsubscribe { filter } => {
                let Some(sub) = self.subscriptions.get_mut(&filter) else {
                    return;
                };
                sub.holders = sub.holders.saturating_sub(1);
                if sub.holders == 0 {
                    if let Some(sub) = self.subscriptions.remove(&filter) {
                        for waiter in sub.waiters {
                            let _ = waiter.send(Err(ErrorKind::Shutdown.into()));
                        }
                    }
                    let mut unsubscribe = Unsubscribe::new(filter);
                    unsubscribe.pkid = self.next_pkid();
                    encode(&Packet::Unsubscribe(unsubscribe), out);
                }
            }
        }
    }

    fn incoming(
        &mut self,
        packet: Packet,
        out: &mut BytesMut,
        awaiting_pong: &mut bool,
    ) -> Result<(), Error> {
        match packet {
            Packet::PubAck(ack) => {
                if let Some(entry) = self.inflight.remove(&ack.pkid) {
                    let _ = entry.done.send(Ok(()));
                }
            }
            Packet::SubAck(ack) => {
                let Some(filter) = self.pending_subacks.remove(&ack.pkid) else {
                    return Ok(());
                };
                let granted = !ack.return_codes.is_empty()
                    && ack
                        .return_codes
                        .iter()
                        .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if granted {
                    if let Some(sub) = self.subscriptions.get_mut(&filter) {
                        sub.granted = true;
                        for waiter in sub.waiters.drain(..) {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                } else if let Some(sub) = self.subscriptions.remove(&filter) {
                    for waiter in sub.waiters {
                        let _ = waiter.send(Err(ErrorKind::SubscribeRefused {
                            topic: filter.clone(),
                        }
                        .into()));
                    }
                }
            }
            Packet::Publish(publish) => {
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => encode(&Packet::PubAck(PubAck::new(publish.pkid)), out),
                    QoS::ExactlyOnce => {
                        return Err(ErrorKind::Protocol(
                            "QoS 2 delivery on a QoS 1 subscription".to_owned(),
                        )
                        .into())
                    }
                }
                self.shared.route(
                    &publish.topic,
                    Message {
                        payload: publish.payload,
                        retain: publish.retain,
                    },
                );
            }
            Packet::PingResp => *awaiting_pong = false,
            Packet::UnsubAck(_) => {}
            other => {
                return Err(ErrorKind::Protocol(format!(
                    "unexpected packet from the broker: {other:?}"
                ))
                .into())
            }
        }
        Ok(())
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) {
    // Sizes were checked before the command was queued; encoding into a
    // growable buffer with no size limit cannot fail.
    if let Err(e) = packet.write(out, usize::MAX) {
        tracing::error!(error = %e, "could not encode an MQTT packet");
    }
}

async fn write_out(
    writer: &mut WriteHalf<Box<dyn Stream>>,
    out: &mut BytesMut,
) -> Result<(), Error> {
    let lost = |e| Error::with_source(ErrorKind::ConnectionLost, e);
    writer.write_all(out).await.map_err(lost)?;
    writer.flush().await.map_err(lost)?;
    out.clear();
    Ok(())
}

async fn read_packets(
    mut reader: ReadHalf<Box<dyn Stream>>,
    mut buf: BytesMut,
    packets: mpsc::UnboundedSender<Result<Packet, Error>>,
) {
    loop {
        loop {
            match Packet::read(&mut buf, MAX_INCOMING_PACKET) {
                Ok(packet) => {
                    if packets.send(Ok(packet)).is_err() {
                        return;
                    }
                }
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => {
                    let _ = packets.send(Err(ErrorKind::Protocol(format!(
                        "malformed packet from the broker: {e}"
                    ))
                    .into()));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = packets.send(Err(Error::with_source(
                    ErrorKind::ConnectionLost,
                    "the broker closed the connection",
                )));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = packets.send(Err(Error::with_source(ErrorKind::ConnectionLost, e)));
                return;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
