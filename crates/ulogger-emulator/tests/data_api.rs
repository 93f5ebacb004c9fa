//! The data API (PROTOCOL §13): what devices sent over MQTT and HTTP,
//! read back with `GET /metrics`, `/events` and `/logs` over real sockets
//! (HTTP spoken byte by byte, as in http.rs), and the store's refusal
//! withholding the acknowledgement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use rumqttc::{Event, Packet, QoS};
use serde_json::{json, Value};
use support::device::{self, APP};
use support::{client_options, TestClient, CUSTOMER, SOON};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use ulogger_cloud::wire::{parse_boot_reply, Topics};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits, DATABASE_FILE};

const GROUP: u32 = 5;

fn start(plaintext: bool) -> Emulator {
    Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .group_id(GROUP)
            .plaintext(plaintext)
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap()
}

fn topics(emu: &Emulator) -> Topics {
    Topics::new("", emu.customer_id(), Some(emu.group_id())).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One request on a fresh connection: the status and the JSON body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
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
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_slice(&reply[split + 4..]).unwrap())
}

async fn get_with(emu: &Emulator, target: &str, authorization: Option<&str>) -> (u16, Value) {
    let stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    exchange(stream, "GET", target, &headers, b"").await
}

/// A query with the emulator's token that must succeed.
async fn get(emu: &Emulator, target: &str) -> Value {
    let token = format!("Bearer {}", emu.api_token());
    let (status, body) = get_with(emu, target, Some(&token)).await;
    assert_eq!(status, 200, "{target}: {body}");
    assert_eq!(
        body["count"].as_u64().unwrap() as usize,
        body.as_object()
            .unwrap()
            .values()
            .find_map(Value::as_array)
            .unwrap()
            .len(),
        "count is the number of items: {body}"
    );
    body
}

async fn post(emu: &Emulator, path: &str, body: &Value) -> (u16, Value) {
    let stream = TcpStream::connect(emu.http_addr()).await.unwrap();
    let token = format!("Bearer {}", emu.api_token());
    let headers = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    exchange(stream, "POST", path, &headers, body.to_string().as_bytes()).await
}

async fn device_client(emu: &Emulator, suffix: &str) -> TestClient {
    let tls = emu.certs().map(|c| c.client_config().unwrap());
    TestClient::connect(client_options(
        emu.addr(),
        tls,
        &format!("cust-{CUSTOMER}-{suffix}"),
    ))
    .await
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn metrics_from_mqtt_and_http_come_back_newest_first_with_their_json_types() {
    let emu = start(true);
    let topics = topics(&emu);
    let mut client = device_client(&emu, "gw").await;
    let t = now() - 60;
    let single = json!({"device_serial": "SN1", "metrics": [
        {"name": "temp", "value": 21, "timestamp": t},
        {"name": "temp", "value": 21.5, "timestamp": t + 1},
        {"name": "other", "value": 1, "timestamp": t + 2},
    ]});
    let metrics = topics.metrics(APP).unwrap();
    client
        .publish(&metrics, QoS::AtLeastOnce, false, single.to_string())
        .await;
    // A gzip batch: its second device's app_id overrides the topic's.
    let batch = json!({"devices": [
        {"device_serial": "SN1", "metrics": [{"name": "temp", "value": -3, "timestamp": t + 3}]},
        {"device_serial": "SN2", "app_id": 99, "metrics": [{"name": "temp", "value": 1e300}]},
    ]});
    client
        .publish(
            &metrics,
            QoS::AtLeastOnce,
            false,
            gz(batch.to_string().as_bytes()),
        )
        .await;
    let (status, reply) = post(
        &emu,
        "/publish/metrics",
        &json!({"app_id": APP.to_string(), "group_id": GROUP.to_string(),
                "device_serial": "SN1",
                "metrics": [{"name": "temp", "value": 18446744073709551615u64, "timestamp": t + 4}]}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    let body = get(
        &emu,
        &format!(
            "/metrics?application_id={APP}&device_serial=SN1&metric_name=temp&start=5m&limit=10"
        ),
    )
    .await;
    let values: Vec<&Value> = body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["value"])
        .collect();
    assert_eq!(
        values,
        [
            &json!(18446744073709551615u64),
            &json!(-3),
            &json!(21.5),
            &json!(21)
        ]
    );
    assert!(body["metrics"][3]["value"].is_u64(), "an integer stays one");
    assert!(body["metrics"][2]["value"].is_f64());
    assert_eq!(
        body["metrics"][3],
        json!({"name": "temp", "value": 21, "timestamp": t,
               "device_serial": "SN1", "application_id": APP})
    );

    // The batch's own app id; no timestamp: the time it arrived.
    let other = get(&emu, "/metrics?application_id=99").await;
    assert_eq!(other["count"], 1);
    assert_eq!(other["metrics"][0]["device_serial"], "SN2");
    assert_eq!(other["metrics"][0]["value"], json!(1e300));
    let arrived = other["metrics"][0]["timestamp"].as_i64().unwrap();
    assert!((now() - arrived).abs() < 60, "{arrived}");

    assert_eq!(get(&emu, "/metrics").await["count"], 6);
}

#[tokio::test]
async fn windows_bounds_and_limit_select_what_comes_back() {
    let emu = start(true);
    let now = now();
    let stamps = [now - 30, now - 2 * 3600, now - 3 * 86_400, 1_600_000_000];
    let samples: Vec<Value> = stamps
        .iter()
        .map(|t| json!({"name": "n", "value": t, "timestamp": t}))
        .collect();
    let (status, reply) = post(
        &emu,
        "/publish/metrics",
        &json!({"app_id": "1", "group_id": "0", "device_serial": "S", "metrics": samples}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let times = |body: Value| -> Vec<i64> {
        body["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["timestamp"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(times(get(&emu, "/metrics?start=5m").await), [stamps[0]]);
    assert_eq!(times(get(&emu, "/metrics?start=90s").await), [stamps[0]]);
    assert_eq!(times(get(&emu, "/metrics?start=3h").await), stamps[..2]);
    assert_eq!(times(get(&emu, "/metrics?start=7d").await), stamps[..3]);
    assert_eq!(
        times(get(&emu, "/metrics?start=1599999999&end=1600000001").await),
        [stamps[3]]
    );
    assert_eq!(times(get(&emu, "/metrics?end=1d").await), stamps[2..]);
    assert_eq!(times(get(&emu, "/metrics?limit=2").await), stamps[..2]);
    assert_eq!(times(get(&emu, "/metrics").await), stamps);
}

#[tokio::test]
async fn events_and_logs_come_back_with_their_fields() {
    let emu = start(true);
    let topics = topics(&emu);
    let mut client = device_client(&emu, "gw").await;
    let t = now() - 10;
    let events = json!({"device_serial": "SN1", "events": [
        {"type": "boot", "timestamp": t}, {"type": "door", "timestamp": t + 1}]});
    client
        .publish(
            &topics.events(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            events.to_string(),
        )
        .await;
    let body = get(
        &emu,
        &format!("/events?application_id={APP}&device_serial=SN1&start=1h"),
    )
    .await;
    assert_eq!(
        body,
        json!({"count": 2, "events": [
            {"type": "door", "timestamp": t + 1, "device_serial": "SN1", "application_id": APP},
            {"type": "boot", "timestamp": t, "device_serial": "SN1", "application_id": APP},
        ]})
    );

    // A binary log from a registered device, then a text-log batch.
    let serial = "SN-LOG";
    client
        .subscribe(&topics.boot_reply(APP, serial).unwrap(), QoS::AtLeastOnce)
        .await;
    client
        .publish(
            &topics.boot(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            device::boot_payload(serial),
        )
        .await;
    let reply = client.next_publish(SOON).await.expect("a boot reply");
    let token = parse_boot_reply(&reply.payload).unwrap().unwrap();
    let log = device::log(token, b"0123456789");
    client
        .publish(
            &topics.binlog(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            log.clone(),
        )
        .await;
    let text = format!(
        "{}\n{}\n{}\n",
        json!({"sequence": 41, "device_type": "gw", "version": "1", "git": "g", "serial": serial}),
        json!({"t": t as f64 + 0.25, "lv": 2, "m": "hello"}),
        json!({"t": t + 2, "lv": 5, "m": "bye"}),
    );
    client
        .publish(
            &format!("logs/v0/{CUSTOMER}/{GROUP}/{APP}"),
            QoS::AtLeastOnce,
            false,
            text,
        )
        .await;

    let body = get(&emu, &format!("/logs?device_serial={serial}")).await;
    let logs = body["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 3, "{body}");
    // The binary log is dated by its arrival, so it is the newest.
    let binary = &logs[0];
    assert_eq!(binary["type"], "binary");
    assert_eq!(binary["version"], 4);
    assert_eq!(binary["session_token"], token);
    assert_eq!(binary["used_bytes"], 10);
    assert_eq!(binary["size"], log.len());
    assert_eq!(binary["serial"], serial);
    assert_eq!(binary["application_id"], APP);
    assert!(binary["anchor_tick"].is_u64() && binary["epoch_time_us"].is_u64());
    assert!(binary.get("sequence").is_none(), "v4 has no sequence");
    assert!(binary["received"].is_i64());
    assert_eq!(
        (&logs[1]["m"], &logs[1]["lv"], &logs[1]["t"]),
        (&json!("bye"), &json!(5), &json!(t + 2))
    );
    assert_eq!(logs[2]["t"], json!(t as f64 + 0.25));
    assert_eq!(
        (&logs[2]["sequence"], &logs[2]["serial"]),
        (&json!(41), &json!(serial))
    );
    assert_eq!(logs[2]["type"], "text");
    // The window reads each entry's own time.
    assert_eq!(
        get(&emu, &format!("/logs?device_serial={serial}&end={}", t + 1)).await["count"],
        1
    );
}

#[tokio::test]
async fn https_queries_with_the_ca_and_the_token() {
    let emu = start(false);
    let config = ulogger_emulator::client_tls_config(&emu.certs().unwrap().ca_cert, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(emu.http_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let token = format!("Bearer {}", emu.api_token());
    let (status, body) = exchange(
        tls,
        "GET",
        "/events?start=5m",
        &[("Authorization", &token)],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"count": 0, "events": []}));
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_and_bad_parameters_400_naming_them() {
    let emu = start(true);
    for auth in [None, Some("Bearer ulg_wrong"), Some("Basic dXNlcjpwYXNz")] {
        for route in ["/metrics", "/events", "/logs"] {
            let (status, body) = get_with(&emu, route, auth).await;
            assert_eq!(status, 401, "{route} {auth:?}: {body}");
            assert_eq!(body["success"], false);
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        }
    }
    let token = format!("Bearer {}", emu.api_token());
    for (target, parameter) in [
        ("/metrics?start=5parsecs", "start"),
        ("/metrics?end=yesterday", "end"),
        ("/metrics?limit=0", "limit"),
        ("/metrics?limit=10001", "limit"),
        ("/metrics?application_id=seven", "application_id"),
        ("/metrics?device_serial=", "device_serial"),
        ("/metrics?serial=SN1", "serial"),
        ("/events?metric_name=t", "metric_name"),
        ("/logs?start=100&end=50", "start"),
    ] {
        let (status, body) = get_with(&emu, target, Some(&token)).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(body["parameter"], parameter, "{target}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(parameter),
            "{body}"
        );
    }
    let (status, _) = exchange(
        TcpStream::connect(emu.http_addr()).await.unwrap(),
        "POST",
        "/metrics",
        &[("Authorization", &token)],
        b"",
    )
    .await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn what_the_database_refuses_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .group_id(GROUP)
            .plaintext(true)
            .data_dir(dir.path()),
    )
    .unwrap();
    // Another connection makes the emulator's metric inserts fail, as a
    // full disk or a damaged file would.
    let other = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON metrics \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let topics = topics(&emu);
    let mut client = device_client(&emu, "gw").await;
    let payload = json!({"device_serial": "S", "metrics": [{"name": "n", "value": 1}]});
    client
        .client
        .publish(
            topics.metrics(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
    // The broker closes the connection instead of acknowledging, so the
    // client sends the message again on its next connection.
    loop {
        match client
            .next_event(SOON)
            .await
            .expect("the connection closes")
        {
            Ok(Event::Incoming(Packet::PubAck(_))) => panic!("a PUBACK for a message not stored"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let (status, body) = post(
        &emu,
        "/publish/metrics",
        &json!({"app_id": "1", "group_id": "0", "device_serial": "S",
                "metrics": [{"name": "n", "value": 1}]}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(emu.records().is_empty(), "{:?}", emu.records());

    other.execute_batch("DROP TRIGGER refuse").unwrap();
    let mut client = device_client(&emu, "gw").await;
    client
        .publish(
            &topics.metrics(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await;
    assert_eq!(get(&emu, "/metrics").await["count"], 1);
    assert_eq!(emu.records().len(), 1);
}

#[tokio::test]
async fn a_payload_that_cannot_be_stored_is_not_acknowledged() {
    // A kept data directory: payloads are synced before their PUBACK.
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .group_id(GROUP)
            .plaintext(true)
            .data_dir(dir.path()),
    )
    .unwrap();
    let topics = topics(&emu);
    let payload = |n: u32| json!({"device_serial": "S", "metrics": [{"name": "n", "value": n}]});
    let mut client = device_client(&emu, "gw").await;
    client
        .publish(
            &topics.metrics(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            payload(1).to_string(),
        )
        .await;
    assert_eq!(emu.records().len(), 1);

    // The payload directory turns into a regular file: every write into
    // it fails, even as root (where a chmod would not stop writes).
    let payloads = dir.path().join("metrics");
    let aside = dir.path().join("metrics.aside");
    std::fs::rename(&payloads, &aside).unwrap();
    std::fs::write(&payloads, b"not a directory").unwrap();
    client
        .client
        .publish(
            topics.metrics(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            payload(2).to_string(),
        )
        .await
        .unwrap();
    // As for a database refusal: the connection closes, no PUBACK.
    loop {
        match client
            .next_event(SOON)
            .await
            .expect("the connection closes")
        {
            Ok(Event::Incoming(Packet::PubAck(_))) => panic!("a PUBACK for a payload not stored"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(emu.records().len(), 1, "{:?}", emu.records());
    assert_eq!(get(&emu, "/metrics").await["count"], 1);

    // The fault removed, the message sent again is stored and acknowledged.
    std::fs::remove_file(&payloads).unwrap();
    std::fs::rename(&aside, &payloads).unwrap();
    let mut client = device_client(&emu, "gw").await;
    client
        .publish(
            &topics.metrics(APP).unwrap(),
            QoS::AtLeastOnce,
            false,
            payload(2).to_string(),
        )
        .await;
    let records = emu.records();
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        let file = dir.path().join(record.file.as_ref().unwrap());
        assert!(file.is_file(), "{}", file.display());
    }
    assert_eq!(get(&emu, "/metrics").await["count"], 2);
}
