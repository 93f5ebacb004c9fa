//! The HTTP telemetry endpoints, spoken to byte by byte (no HTTP client
//! library), so the emulator's answers are checked on their own terms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use ulogger_emulator::{Emulator, EmulatorConfig, HttpFaults, Record, RecordKind};

const GROUP: u32 = 5;

/// A request header: name, value.
type Header<'a> = (&'a str, &'a str);

fn start(plaintext: bool) -> Emulator {
    Emulator::start(EmulatorConfig::new(42).group_id(GROUP).plaintext(plaintext)).unwrap()
}

/// One request on a fresh connection; the status and the body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(reply[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, reply[split + 4..].to_vec())
}

async fn post(emu: &Emulator, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let (status, headers, body) = exchange(stream, path, headers, body).await;
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json"),
        "{headers:?}"
    );
    (status, serde_json::from_slice(&body).unwrap())
}

fn auth(emu: &Emulator) -> String {
    format!("Bearer {}", emu.api_token())
}

fn metrics_body(group: u32) -> Vec<u8> {
    json!({"app_id": "7", "group_id": group.to_string(), "device_serial": "SN1",
           "metrics": [{"name": "t", "value": 1.5}]})
    .to_string()
    .into_bytes()
}

fn last(emu: &Emulator) -> Record {
    emu.records().pop().expect("a record")
}

#[tokio::test]
async fn a_good_body_is_stored_and_answered_success() {
    let emu = start(true);
    assert!(emu.api_token().starts_with("ulg_") && emu.api_token().len() == 36);
    assert!(emu.http_url().starts_with("http://"));
    let token = auth(&emu);
    let headers = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, reply) = post(&emu, "/publish/metrics", &headers, &metrics_body(GROUP)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["success"], true);
    let rec = last(&emu);
    assert!(rec.is_ok(), "{rec:?}");
    assert_eq!(rec.kind, RecordKind::Metrics);
    assert_eq!(rec.topic, "POST /publish/metrics");
    assert_eq!(rec.app_id, Some(7));
    assert_eq!(rec.serial.as_deref(), Some("SN1"));
    assert_eq!(rec.compressed, Some(false));

    // Gzip, announced by the header and found by the magic bytes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(br#"{"app_id":"7","group_id":"5","devices":[{"device_serial":"A","events":[{"type":"boot"}]}]}"#)
        .unwrap();
    let gz = gz.finish().unwrap();
    let headers = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ];
    let (status, reply) = post(&emu, "/publish/events", &headers, &gz).await;
    assert_eq!(status, 200, "{reply}");
    let rec = last(&emu);
    assert!(rec.is_ok(), "{rec:?}");
    assert_eq!((rec.kind, rec.compressed), (RecordKind::Events, Some(true)));
    assert_eq!(emu.http_requests(), 2);
}

#[tokio::test]
async fn https_needs_no_client_certificate_and_chains_to_the_ca() {
    let emu = start(false);
    assert!(emu.http_url().starts_with("https://"));
    let config = ulogger_emulator::client_tls_config(&emu.certs().unwrap().ca_cert, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(emu.http_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let token = auth(&emu);
    let headers = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, _, body) = exchange(tls, "/publish/metrics", &headers, &metrics_body(GROUP)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(last(&emu).is_ok());
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_in_json_and_are_recorded() {
    let emu = start(true);
    let cases: [&[(&str, &str)]; 3] = [
        &[("Content-Type", "application/json")],
        &[
            ("Authorization", "Bearer ulg_wrong"),
            ("Content-Type", "application/json"),
        ],
        &[
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Content-Type", "application/json"),
        ],
    ];
    for headers in cases {
        let (status, reply) = post(&emu, "/publish/metrics", headers, &metrics_body(GROUP)).await;
        assert_eq!(status, 401, "{headers:?}: {reply}");
        assert_eq!(reply["success"], false);
        assert!(reply["error"].as_str().unwrap().len() > 5, "{reply}");
        let rec = last(&emu);
        assert_eq!(rec.kind, RecordKind::Rejected);
        assert!(
            rec.reason.as_deref().unwrap().starts_with("HTTP 401"),
            "{rec:?}"
        );
    }
    assert!(emu.records().iter().all(|r| r.kind == RecordKind::Rejected));
    // The issued token is in no record.
    let index = std::fs::read_to_string(emu.index_path()).unwrap();
    assert!(!index.contains(emu.api_token()));
}

#[tokio::test]
async fn bad_bodies_get_400_with_the_reason_and_a_rejected_record() {
    let emu = start(true);
    let token = auth(&emu);
    let json = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let gzip = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ];
    let no_ids = br#"{"device_serial":"SN1","metrics":[{"name":"t","value":1}]}"#.to_vec();
    let cases: Vec<(&[Header], Vec<u8>, &str)> = vec![
        (&json, b"not json".to_vec(), "not JSON"),
        (
            &json,
            br#"{"app_id":"7","group_id":"5","device_serial":"","metrics":[{"name":"t","value":1}]}"#.to_vec(),
            "device_serial is empty",
        ),
        (&json, no_ids, "app_id is missing"),
        (
            &json,
            br#"{"app_id":7,"group_id":"5","device_serial":"S","metrics":[{"name":"t","value":1}]}"#.to_vec(),
            "not a string",
        ),
        // Any group is routed (as over MQTT), but it must be an id.
        (
            &json,
            br#"{"app_id":"7","group_id":"g5","device_serial":"S","metrics":[{"name":"t","value":1}]}"#.to_vec(),
            "group_id \"g5\" is not a string of digits",
        ),
        (&gzip, metrics_body(GROUP), "the body is not gzip"),
    ];
    for (headers, body, want) in cases {
        let (status, reply) = post(&emu, "/publish/metrics", headers, &body).await;
        assert_eq!(status, 400, "{want}: {reply}");
        assert_eq!(reply["success"], false);
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(want), "{error:?} lacks {want:?}");
        let rec = last(&emu);
        assert_eq!(rec.kind, RecordKind::Metrics);
        assert!(!rec.is_ok());
        assert_eq!(rec.reason.as_deref(), Some(error));
    }

    let (status, reply) = post(
        &emu,
        "/publish/metrics",
        &[
            ("Authorization", token.as_str()),
            ("Content-Type", "text/plain"),
        ],
        &metrics_body(GROUP),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    let (status, _) = post(&emu, "/publish/logs", &json, b"{}").await;
    assert_eq!(status, 404);
    // Any group is taken, as MQTT topics of every group are routed.
    let (status, reply) = post(&emu, "/publish/metrics", &json, &metrics_body(GROUP + 1)).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn fault_switches_answer_500_429_and_garbage_for_the_next_requests() {
    let emu = start(true);
    let token = auth(&emu);
    let json = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    emu.faults().fail_http_requests(1);
    emu.faults()
        .throttle_http_requests(1, std::time::Duration::from_secs(7));
    emu.faults().garble_http_replies(1);
    assert_eq!(
        emu.faults().http_snapshot(),
        HttpFaults {
            server_errors: 1,
            throttled: 1,
            retry_after_secs: 7,
            garbage_replies: 1
        }
    );

    let (status, reply) = post(&emu, "/publish/metrics", &json, &metrics_body(GROUP)).await;
    assert_eq!((status, &reply["success"]), (500, &Value::Bool(false)));

    let stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let (status, headers, _) =
        exchange(stream, "/publish/metrics", &json, &metrics_body(GROUP)).await;
    assert_eq!(status, 429);
    assert!(
        headers.contains(&("retry-after".into(), "7".into())),
        "{headers:?}"
    );

    let stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let (status, _, body) = exchange(stream, "/publish/metrics", &json, &metrics_body(GROUP)).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    // Faults store nothing; then the endpoint is back to normal.
    assert!(emu.records().is_empty());
    let (status, _) = post(&emu, "/publish/metrics", &json, &metrics_body(GROUP)).await;
    assert_eq!(status, 200);
    assert_eq!(emu.records().len(), 1);
    assert_eq!(emu.http_requests(), 4);
}

#[test]
fn a_kept_data_directory_keeps_its_api_token_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EmulatorConfig::new(42).plaintext(true).data_dir(dir.path());
    let first = Emulator::start(config()).unwrap();
    let token = first.api_token().to_owned();
    first.shutdown().unwrap();
    let second = Emulator::start(config()).unwrap();
    assert_eq!(second.api_token(), token);
    second.shutdown().unwrap();

    // A damaged token file gets a fresh token rather than a failed start.
    std::fs::write(dir.path().join("api_token"), "garbage").unwrap();
    let third = Emulator::start(config()).unwrap();
    assert!(third.api_token().starts_with("ulg_") && third.api_token() != token);
    let other = start(true);
    assert_ne!(other.api_token(), third.api_token());
}
