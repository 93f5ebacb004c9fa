//! The emulator's half of the firmware ELF upload (PROTOCOL §11): the
//! request over MQTT with an ordinary client, the PUT spoken byte by byte,
//! so the emulator's answers are checked on their own terms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use rumqttc::QoS;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ulogger_emulator::{Emulator, RecordKind, Verdict};
use ulogger_wire::{parse_elf_upload_reply, ElfUploadRequest};

const APP: u32 = 7;

fn request(upload_id: u64) -> ElfUploadRequest {
    ElfUploadRequest {
        upload_id,
        customer_id: CUSTOMER,
        application_id: APP,
        device_type: "nRF52 DK".into(),
        version: "v2.0.0".into(),
        git_hash: "0123abc".into(),
        branch: "main".into(),
    }
}

/// Publishes `request` on its topic and returns the answer's URL path,
/// or `None` when no answer comes.
async fn ask(client: &mut TestClient, request: &ElfUploadRequest) -> Option<String> {
    let reply_topic = format!("upload/v0/{CUSTOMER}/{}", request.upload_id);
    client.subscribe(&reply_topic, QoS::AtLeastOnce).await;
    let topic = format!(
        "upload/v0/firmware/{}/{}",
        request.customer_id, request.device_type
    );
    client
        .publish(&topic, QoS::AtLeastOnce, false, request.payload())
        .await;
    let reply = client.next_publish(QUIET * 3).await?;
    assert_eq!(reply.topic, reply_topic);
    let url = parse_elf_upload_reply(&reply.payload, request.upload_id)
        .unwrap()
        .expect("the answer");
    let (_, path) = url.split_once("://").unwrap().1.split_once('/').unwrap();
    Some(format!("/{path}"))
}

/// One request on a fresh plain HTTP connection: the status.
async fn send(emu: &Emulator, method: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

const OCTETS: &str = "application/octet-stream";

#[tokio::test]
async fn a_url_takes_one_upload_then_is_gone() {
    let broker = BrokerUnderTest::emulator(true);
    let emu = broker.emulator.as_ref().unwrap();
    let mut client = broker.connect("ci").await;
    let path = ask(&mut client, &request(1)).await.expect("an answer");
    assert!(path.starts_with("/elf-upload/"), "{path}");
    let elf = b"\x7fELF\x01\x01\x01 firmware".to_vec();

    assert_eq!(send(emu, "GET", &path, OCTETS, b"").await, 405);
    assert_eq!(send(emu, "PUT", &path, "text/plain", &elf).await, 400);
    assert_eq!(send(emu, "PUT", &path, OCTETS, b"").await, 400);
    // None of those used the URL up.
    assert_eq!(send(emu, "PUT", &path, OCTETS, &elf).await, 200);
    assert_eq!(send(emu, "PUT", &path, OCTETS, &elf).await, 410);
    assert_eq!(
        send(emu, "PUT", "/elf-upload/not-issued", OCTETS, &elf).await,
        404
    );

    let stored = emu.find_elf(APP, "nRF52 DK", "v2.0.0").expect("stored");
    assert_eq!(emu.read_elf(&stored).unwrap(), elf);
    assert_eq!((stored.customer_id, stored.upload_id), (CUSTOMER, 1));
    let puts: Vec<_> = emu
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::ElfUpload)
        .map(|r| r.verdict)
        .collect();
    assert_eq!(puts, [Verdict::Ok, Verdict::Rejected, Verdict::Rejected]);
}

#[tokio::test]
async fn a_later_upload_of_the_same_firmware_replaces_the_earlier() {
    let broker = BrokerUnderTest::emulator(true);
    let emu = broker.emulator.as_ref().unwrap();
    let mut client = broker.connect("ci").await;
    for (id, elf) in [(1, &b"\x7fELF first"[..]), (2, b"\x7fELF second")] {
        let path = ask(&mut client, &request(id)).await.expect("an answer");
        assert_eq!(send(emu, "PUT", &path, OCTETS, elf).await, 200);
    }
    let stored = emu.stored_elfs();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].upload_id, 2);
    assert_eq!(emu.read_elf(&stored[0]).unwrap(), b"\x7fELF second");
}

#[tokio::test]
async fn requests_that_do_not_match_their_topic_are_recorded_and_unanswered() {
    let broker = BrokerUnderTest::emulator(true);
    let emu = broker.emulator.as_ref().unwrap();
    let mut client = broker.connect("ci").await;
    let mut wrong_customer = request(3);
    wrong_customer.customer_id = CUSTOMER + 1;
    // Published on this customer's topic, naming another in the body.
    let topic = format!("upload/v0/firmware/{CUSTOMER}/nRF52 DK");
    client
        .subscribe(&format!("upload/v0/{CUSTOMER}/3"), QoS::AtLeastOnce)
        .await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, wrong_customer.payload())
        .await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, b"not json".to_vec())
        .await;
    assert!(client.next_publish(QUIET).await.is_none(), "answered");

    emu.faults().ignore_elf_upload_requests(1);
    assert_eq!(ask(&mut client, &request(4)).await, None);
    assert!(ask(&mut client, &request(5)).await.is_some());

    let requests: Vec<_> = emu
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::ElfUploadRequest)
        .collect();
    assert_eq!(requests.len(), 4);
    assert!(requests[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("names customer 43"));
    assert_eq!(requests[1].verdict, Verdict::Rejected);
    assert!(requests[2].reason.as_deref().unwrap().contains("fault"));
    assert!(requests[3].is_ok());
}
