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
