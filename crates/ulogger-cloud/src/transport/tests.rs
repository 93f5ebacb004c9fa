//! The transport against a minimal broker on a real socket: what only a
//! peer can show (a lost connection, a broker that never comes back).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Transport;
use crate::config::{MqttConfig, Pacing, Security};
use crate::error::Phase;

/// Reads one MQTT packet from `socket` (buffering in `buf`).
async fn read_packet(socket: &mut TcpStream, buf: &mut BytesMut) -> Packet {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(packet) => return packet,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("malformed packet from the client: {e}"),
        }
        let n = socket.read_buf(buf).await.unwrap();
        assert!(n > 0, "the client closed the connection");
    }
}

async fn send(socket: &mut TcpStream, packet: Packet) {
    let mut out = BytesMut::new();
    packet.write(&mut out, usize::MAX).unwrap();
    socket.write_all(&out).await.unwrap();
}

/// Accepts one client and completes its CONNECT.
async fn accept(listener: &TcpListener) -> (TcpStream, BytesMut) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let Packet::Connect(_) = read_packet(&mut socket, &mut buf).await else {
        panic!("expected CONNECT");
    };
    send(
        &mut socket,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await;
    (socket, buf)
}

fn transport(port: u16, connect_timeout: Duration) -> Transport {
    let settings = MqttConfig::new(42)
        .broker("127.0.0.1")
        .port(port)
        .security(Security::Plaintext)
        .pacing(Pacing::off())
        .connect_timeout(connect_timeout)
        .ack_timeout(Duration::from_secs(60))
        .validate()
        .unwrap();
    Transport::start(settings).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_completes_on_its_own_puback_whoever_wrote_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let transport = transport(port, Duration::from_secs(5));
    let (mut socket, mut buf) = accept(&listener).await;
    transport.connected().await.unwrap();

    // On an idle connection the caller writes its publish itself; the
    // next two queue behind it for the driver.
    let mut publishes: Vec<_> = (0..3u8)
        .map(|i| {
            let transport = transport.clone();
            Some(tokio::spawn(async move {
                transport
                    .publish("t".to_owned(), Bytes::from(vec![i; 8]))
                    .await
            }))
        })
        .collect();
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let Packet::Publish(publish) = read_packet(&mut socket, &mut buf).await else {
            continue;
        };
        ids.push((publish.pkid, usize::from(publish.payload[0])));
    }
    // Acknowledge in reverse: each caller completes on its own PUBACK,
    // while the ones written before it still wait.
    for (pkid, i) in ids.iter().rev() {
        send(&mut socket, Packet::PubAck(PubAck::new(*pkid))).await;
        let publish = publishes[*i].take().expect("acknowledged once");
        tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .unwrap_or_else(|_| panic!("publish {i} did not complete on PUBACK {pkid}"))
            .unwrap()
            .unwrap();
        for (other_pkid, j) in &ids {
            if other_pkid < pkid {
                let other = publishes[*j].as_ref().expect("not acknowledged yet");
                assert!(
                    !other.is_finished(),
                    "publish {j} completed before its PUBACK"
                );
            }
        }
    }
    transport.shutdown().await;
}

/// Payloads are written straight from the session in vectored writes
/// (`chunks`): a broker that takes the bytes a little at a time, so that
/// nearly every write is cut inside a header or a payload, still gets
/// every PUBLISH whole, each once, with its own payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_slow_to_read_gets_every_publish_whole() {
    const PUBLISHES: usize = 100;
    const SIZE: usize = 60_000;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window: the client's writes stop part way.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let transport = transport(port, Duration::from_secs(5));
    let (mut socket, mut buf) = accept(&listener).await;
    transport.connected().await.unwrap();

    let payload = |i: usize| -> Vec<u8> {
        let mut p = vec![u8::try_from(i % 251).unwrap(); SIZE];
        p[..8].copy_from_slice(&(i as u64).to_be_bytes());
        p
    };
    let publishes: Vec<_> = (0..PUBLISHES)
        .map(|i| {
            let transport = transport.clone();
            let bytes = Bytes::from(payload(i));
            tokio::spawn(async move { transport.publish("a/b".to_owned(), bytes).await })
        })
        .collect();

    // Read in small pieces, letting the client run between them.
    let mut seen = vec![0u32; PUBLISHES];
    let mut pkids = std::collections::HashSet::new();
    let mut piece = [0u8; 1000];
    while pkids.len() < PUBLISHES {
        match Packet::read(&mut buf, 1 << 20) {
            Ok(Packet::Publish(publish)) => {
                assert!(!publish.dup, "a first write is not a re-send");
                assert_eq!(publish.topic, "a/b");
                let i =
                    usize::try_from(u64::from_be_bytes(publish.payload[..8].try_into().unwrap()))
                        .unwrap();
                assert_eq!(&publish.payload[..], &payload(i)[..], "payload {i} intact");
                seen[i] += 1;
                assert!(
                    pkids.insert(publish.pkid),
                    "packet id {} twice",
                    publish.pkid
                );
                continue;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("malformed packet from the client: {e}"),
        }
        let n = socket.read(&mut piece).await.unwrap();
        assert!(n > 0, "the client closed the connection");
        buf.extend_from_slice(&piece[..n]);
        tokio::task::yield_now().await;
    }
    assert!(seen.iter().all(|&n| n == 1), "each publish once: {seen:?}");
    for pkid in pkids {
        send(&mut socket, Packet::PubAck(PubAck::new(pkid))).await;
    }
    for publish in publishes {
        tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .expect("completed on its PUBACK")
            .unwrap()
            .unwrap();
    }
    transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_in_flight_when_the_broker_goes_away_fails_after_the_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect_timeout = Duration::from_millis(300);
    let transport = transport(port, connect_timeout);
    let (mut socket, mut buf) = accept(&listener).await;
    transport.connected().await.unwrap();

    let publishing = {
        let transport = transport.clone();
        tokio::spawn(async move {
            transport
                .publish("t".to_owned(), Bytes::from_static(b"x"))
                .await
        })
    };
    let Packet::Publish(_) = read_packet(&mut socket, &mut buf).await else {
        panic!("expected the PUBLISH");
    };
    // The broker goes away for good: no PUBACK, and every reconnect is
    // refused.
    let lost = std::time::Instant::now();
    drop(socket);
    drop(listener);
    let result = tokio::time::timeout(Duration::from_secs(20), publishing)
        .await
        .expect("the caller is not left waiting for the 60 s acknowledgement timeout")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.timeout_phase(), Some(Phase::Connect), "{err:?}");
    assert!(
        lost.elapsed() >= connect_timeout,
        "not before the connect timeout"
    );
    transport.shutdown().await;
}

#[tokio::test]
async fn a_dropped_listener_leaves_no_route_behind() {
    // Nobody answers: route bookkeeping needs no connection.
    let broker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let transport = transport(broker.local_addr().unwrap().port(), Duration::from_secs(60));
    let first = transport.listen("boot/v0/42/7/SN-1");
    let second = transport.listen("boot/v0/42/7/SN-1");
    let other = transport.listen("config/v0/42/7/SN-1");
    assert_eq!(transport.routed_topics(), 2);
    drop(first);
    assert_eq!(
        transport.routed_topics(),
        2,
        "a listener is still on SN-1's topic"
    );
    drop(second);
    assert_eq!(
        transport.routed_topics(),
        1,
        "SN-1's reply topic is forgotten"
    );
    drop(other);
    assert_eq!(transport.routed_topics(), 0);
    transport.shutdown().await;
}

/// How many callers publish at once in the drop tests: well inside the
/// window (100), so that every publish is in flight together.
const CALLERS: usize = 50;

type Publishing = tokio::task::JoinHandle<Result<(), crate::error::Error>>;

/// Starts [`CALLERS`] concurrent publishes (payload: the caller's index)
/// and reads every PUBLISH on the broker's side. Returns the callers and
/// each PUBLISH's (packet id, caller) in the order the broker read them.
async fn publishes_in_flight(
    transport: &Transport,
    socket: &mut TcpStream,
    buf: &mut BytesMut,
) -> (Vec<Publishing>, Vec<(u16, usize)>) {
    let callers: Vec<Publishing> = (0..CALLERS)
        .map(|i| {
            let transport = transport.clone();
            let index = u8::try_from(i).unwrap();
            tokio::spawn(async move {
                transport
                    .publish("t".to_owned(), Bytes::from(vec![index; 8]))
                    .await
            })
        })
        .collect();
    let mut written = Vec::new();
    while written.len() < CALLERS {
        match read_packet(socket, buf).await {
            Packet::Publish(publish) => {
                assert!(!publish.dup, "a first write carries no DUP: {publish:?}");
                written.push((publish.pkid, usize::from(publish.payload[0])));
            }
            other => panic!("expected only PUBLISHes, got {other:?}"),
        }
    }
    let mut ids: Vec<u16> = written.iter().map(|(pkid, _)| *pkid).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CALLERS, "one packet id per publish in flight");
    (callers, written)
}

/// Writes the PUBACKs of `acked` in one write (one TCP segment on
/// loopback), then closes the connection at once.
async fn acknowledge_then_drop(mut socket: TcpStream, acked: &[(u16, usize)]) {
    let mut out = BytesMut::new();
    for (pkid, _) in acked {
        Packet::PubAck(PubAck::new(*pkid))
            .write(&mut out, usize::MAX)
            .unwrap();
    }
    socket.write_all(&out).await.unwrap();
    // Everything the client sent was read: this is a FIN, not a reset
    // that could discard the PUBACKs on the client's side.
    drop(socket);
}

/// Waits (at most 10 s) for caller `i` and returns its result.
async fn outcome(callers: &mut [Option<Publishing>], i: usize) -> Result<(), crate::error::Error> {
    let caller = callers[i].take().expect("each caller is awaited once");
    tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .unwrap_or_else(|_| panic!("caller {i} never completed"))
        .expect("the caller's task did not panic")
}

/// The session keeps nothing of a publish once its caller was answered.
fn assert_session_empty(transport: &Transport) {
    let session = transport.shared.session();
    assert!(session.inflight.is_empty(), "nothing left in flight");
    assert!(session.queue.is_empty(), "nothing left queued");
    assert!(session.acked.is_empty(), "no completion left parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_acknowledged_just_before_a_drop_complete_and_are_not_re_sent() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let transport = transport(port, Duration::from_secs(5));
        let (mut socket, mut buf) = accept(&listener).await;
        transport.connected().await.unwrap();
        let (callers, written) = publishes_in_flight(&transport, &mut socket, &mut buf).await;
        let mut callers: Vec<Option<Publishing>> = callers.into_iter().map(Some).collect();
        let (acked, unacked) = written.split_at(CALLERS / 2);
        acknowledge_then_drop(socket, acked).await;

        // Acknowledged is acknowledged: these complete while the broker
        // has not even taken the reconnect.
        for &(pkid, i) in acked {
            outcome(&mut callers, i)
                .await
                .unwrap_or_else(|e| panic!("caller {i} (PUBACKed as {pkid}) failed: {e:?}"));
        }
        for &(_, i) in unacked {
            let caller = callers[i].as_ref().expect("not awaited yet");
            assert!(
                !caller.is_finished(),
                "caller {i} completed without a PUBACK"
            );
        }

        // The reconnect re-sends exactly the unacknowledged half, with
        // DUP, under the same packet ids; nothing PUBACKed comes again.
        let (mut socket, mut buf) = accept(&listener).await;
        let mut resent = Vec::new();
        while resent.len() < unacked.len() {
            match read_packet(&mut socket, &mut buf).await {
                Packet::Publish(publish) => {
                    let caller = usize::from(publish.payload[0]);
                    assert!(
                        !acked.contains(&(publish.pkid, caller)),
                        "publish {} (caller {caller}) was PUBACKed and re-sent",
                        publish.pkid
                    );
                    assert!(publish.dup, "a re-send carries DUP: {publish:?}");
                    resent.push((publish.pkid, caller));
                }
                other => panic!("expected only re-sent PUBLISHes, got {other:?}"),
            }
        }
        let mut expected = unacked.to_vec();
        expected.sort_unstable();
        resent.sort_unstable();
        assert_eq!(resent, expected, "each unacknowledged publish re-sent once");
        for &(_, i) in unacked {
            let caller = callers[i].as_ref().expect("not awaited yet");
            assert!(
                !caller.is_finished(),
                "caller {i} completed before its PUBACK"
            );
        }

        let mut out = BytesMut::new();
        for (pkid, _) in &resent {
            Packet::PubAck(PubAck::new(*pkid))
                .write(&mut out, usize::MAX)
                .unwrap();
        }
        socket.write_all(&out).await.unwrap();
        for &(pkid, i) in unacked {
            outcome(&mut callers, i)
                .await
                .unwrap_or_else(|e| panic!("caller {i} (re-sent as {pkid}) failed: {e:?}"));
        }
        assert!(callers.iter().all(Option::is_none), "every caller answered");
        assert_session_empty(&transport);

        // Shut down and read the rest of the connection: nothing more was
        // sent but the DISCONNECT.
        let closing = {
            let transport = transport.clone();
            tokio::spawn(async move { transport.shutdown().await })
        };
        let last = read_packet(&mut socket, &mut buf).await;
        assert!(
            matches!(last, Packet::Disconnect),
            "expected only the DISCONNECT, got {last:?}"
        );
        assert_eq!(
            socket.read_buf(&mut buf).await.unwrap(),
            0,
            "and then the end of the connection"
        );
        closing.await.unwrap();
    })
    .await
    .expect("the exchange did not finish within 60 s");
}

/// When the client is told to shut down, relative to the broker's drop.
#[derive(Debug, Clone, Copy)]
enum ShutdownAt {
    /// The broker wrote the PUBACKs and closed; then the client shuts down.
    AfterTheDrop,
    /// The broker wrote the PUBACKs; the client starts shutting down
    /// (draining what is in flight); then the broker closes.
    BeforeTheDrop,
}

/// Half the publishes in flight are PUBACKed right before the broker
/// drops the connection for good, and the client shuts down around then:
/// the acknowledged callers get `Ok`, the others `Shutdown`, and nobody
/// is left waiting.
async fn shutdown_around_a_drop_after_pubacks(at: ShutdownAt) {
    tokio::time::timeout(Duration::from_secs(60), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let transport = transport(port, Duration::from_secs(5));
        let (mut socket, mut buf) = accept(&listener).await;
        transport.connected().await.unwrap();
        let (callers, written) = publishes_in_flight(&transport, &mut socket, &mut buf).await;
        let mut callers: Vec<Option<Publishing>> = callers.into_iter().map(Some).collect();
        let (acked, unacked) = written.split_at(CALLERS / 2);
        // No broker to come back to: a reconnect is refused at once.
        drop(listener);
        match at {
            ShutdownAt::AfterTheDrop => {
                acknowledge_then_drop(socket, acked).await;
                transport.begin_shutdown();
            }
            ShutdownAt::BeforeTheDrop => {
                let mut out = BytesMut::new();
                for (pkid, _) in acked {
                    Packet::PubAck(PubAck::new(*pkid))
                        .write(&mut out, usize::MAX)
                        .unwrap();
                }
                socket.write_all(&out).await.unwrap();
                transport.begin_shutdown();
                drop(socket);
            }
        }
        tokio::time::timeout(Duration::from_secs(10), transport.shutdown())
            .await
            .unwrap_or_else(|_| panic!("shutdown ({at:?}) did not finish"));
        for &(pkid, i) in acked {
            outcome(&mut callers, i)
                .await
                .unwrap_or_else(|e| panic!("caller {i} (PUBACKed as {pkid}) failed: {e:?}"));
        }
        for &(pkid, i) in unacked {
            let err = outcome(&mut callers, i)
                .await
                .expect_err("no PUBACK, and shut down before a reconnect");
            assert!(
                matches!(err.kind(), crate::error::ErrorKind::Shutdown),
                "caller {i} ({pkid}): {err:?}"
            );
        }
        assert!(callers.iter().all(Option::is_none), "every caller answered");
        assert_session_empty(&transport);
    })
    .await
    .unwrap_or_else(|_| panic!("{at:?}: did not finish within 60 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_after_a_drop_right_after_pubacks_completes_the_acknowledged_and_fails_the_rest()
{
    shutdown_around_a_drop_after_pubacks(ShutdownAt::AfterTheDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_between_pubacks_and_a_drop_completes_the_acknowledged_and_fails_the_rest() {
    shutdown_around_a_drop_after_pubacks(ShutdownAt::BeforeTheDrop).await;
}
