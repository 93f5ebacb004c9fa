//! One connection's byte stream: MQTT framing over a buffered socket,
//! read at the platform's byte rate, with the memory bounds of an idle
//! connection (issue 10) and the stall timeout of a half-sent packet. It
//! knows packets, not what they mean: that is `session`'s job.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::rules;
use super::Broker;
use crate::limits::TokenBucket;

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
pub(super) enum ReadError {
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
pub(super) struct Connection<S> {
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
pub(super) struct ReadThrottle {
    bucket: TokenBucket,
    /// The end of the latest wait for the bucket (maybe still ahead). The
    /// client cannot be heard before it, so keep-alive counts from there.
    held_until: Option<Instant>,
    broker: Arc<Broker>,
}

impl ReadThrottle {
    pub(super) fn new(broker: &Arc<Broker>) -> Option<ReadThrottle> {
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
    pub(super) fn new(
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
    pub(super) async fn next_packet(&mut self) -> Result<Packet, ReadError> {
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
    pub(super) fn heard_since(&self, last_packet: Instant) -> Instant {
        match self.throttle.as_ref().and_then(|t| t.held_until) {
            Some(held_until) => held_until.max(last_packet),
            None => last_packet,
        }
    }

    pub(super) async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        self.write.clear();
        packet
            .write(&mut self.write, usize::MAX)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.stream.write_all(&self.write).await?;
        self.write.clear();
        shrink(&mut self.write);
        self.stream.flush().await
    }

    pub(super) async fn close(mut self) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rumqttc::mqttbytes::v4::{PubAck, Publish};
    use rumqttc::mqttbytes::QoS;
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
