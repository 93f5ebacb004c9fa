//! The HTTPS telemetry fallback end to end against the emulator's HTTP
//! endpoints: over HTTPS with the emulator's CA and over plain HTTP,
//! every call, compression, local refusals, the server's refusals and
//! faults, and the token kept out of every log line and error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use ulogger_cloud::wire::{
    Compression, DeviceEvents, DeviceMetrics, Event, Metric, COMPRESSION_THRESHOLD,
    MAX_MESSAGE_SIZE,
};
use ulogger_cloud::{ErrorKind, HttpReceipt, HttpTelemetry, HttpTelemetryBuilder};
use ulogger_emulator::{Emulator, EmulatorConfig, Record, RecordKind};

const GROUP: u32 = 3;

fn https_emulator() -> Emulator {
    emulator(EmulatorConfig::new(CUSTOMER).group_id(GROUP))
}

fn http_emulator() -> Emulator {
    emulator(
        EmulatorConfig::new(CUSTOMER)
            .group_id(GROUP)
            .plaintext(true),
    )
}

/// A sender for `emu` with its token, CA and group, and quick retries.
fn sender(emu: &Emulator) -> HttpTelemetryBuilder {
    let mut builder = HttpTelemetry::builder(emu.api_token())
        .base_url(emu.http_url())
        .group_id(GROUP)
        .max_backoff(Duration::from_millis(20));
    if let Some(certs) = emu.certs() {
        builder = builder.ca_file(&certs.ca_cert);
    }
    builder
}

fn http_records(emu: &Emulator) -> Vec<Record> {
    emu.records()
        .into_iter()
        .filter(|r| matches!(r.kind, RecordKind::Metrics | RecordKind::Events))
        .collect()
}

/// The record of a request the API accepted (stored before the answer).
fn last_record(emu: &Emulator) -> Record {
    http_records(emu).pop().expect("a telemetry record")
}

fn assert_recorded(emu: &Emulator, receipt: &HttpReceipt, kind: RecordKind, serial: &str) {
    let rec = last_record(emu);
    assert!(rec.is_ok(), "{rec:?}");
    assert_eq!(rec.kind, kind);
    let path = if kind == RecordKind::Events {
        "/publish/events"
    } else {
        "/publish/metrics"
    };
    assert_eq!(rec.topic, format!("POST {path}"));
    assert!(receipt.url.ends_with(path), "{}", receipt.url);
    assert_eq!(rec.serial.as_deref(), Some(serial));
    assert_eq!(rec.app_id, Some(APP));
    assert_eq!(rec.size, receipt.size);
    assert_eq!(rec.compressed, Some(receipt.compressed));
    assert_eq!(receipt.status, 200);
    assert_eq!(receipt.attempts, 1);
}

async fn every_call_is_accepted(emu: Emulator) {
    let http = sender(&emu).build().unwrap();

    let r = http
        .publish_metrics("SN-1", APP, &[Metric::new("temp", 21.5).at(1_700_000_000)])
        .await
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-1");
    let body: serde_json::Value =
        serde_json::from_slice(&stored_bytes(&emu, &last_record(&emu))).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"app_id": APP.to_string(), "group_id": GROUP.to_string(),
            "device_serial": "SN-1",
            "metrics": [{"name": "temp", "value": 21.5, "timestamp": 1_700_000_000}]})
    );

    let r = http
        .publish_events("SN-2", APP, &[Event::new("door_opened")])
        .await
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Events, "SN-2");

    let r = http
        .publish_heartbeat("SN-3", APP, Some(1_700_000_001))
        .await
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-3");
    let body: serde_json::Value =
        serde_json::from_slice(&stored_bytes(&emu, &last_record(&emu))).unwrap();
    assert_eq!(
        body["metrics"],
        serde_json::json!([{"name": "heartbeat", "value": 1, "timestamp": 1_700_000_001}])
    );

    let r = http
        .publish_metrics_batch(
            APP,
            &[
                DeviceMetrics::new("SN-4", vec![Metric::new("a", 1.0)]),
                DeviceMetrics::new("SN-5", vec![Metric::new("b", 2.0)]).app_id(99),
            ],
        )
        .await
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-4");
    let body: serde_json::Value =
        serde_json::from_slice(&stored_bytes(&emu, &last_record(&emu))).unwrap();
    assert_eq!(body["devices"][1]["app_id"], 99);

    let r = http
        .publish_events_batch(
            APP,
            &[
                DeviceEvents::new("SN-6", vec![Event::new("boot").at(5)]),
                DeviceEvents::new("SN-7", vec![Event::new("crash")]),
            ],
        )
        .await
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Events, "SN-6");

    assert_eq!(http_records(&emu).len(), 5);
    assert_eq!(emu.http_requests(), 5);
}

#[tokio::test]
async fn every_call_is_accepted_over_https_with_the_emulators_ca() {
    let emu = https_emulator();
    assert!(emu.http_url().starts_with("https://127.0.0.1:"));
    every_call_is_accepted(emu).await;
}

#[tokio::test]
async fn every_call_is_accepted_over_plain_http() {
    let emu = http_emulator();
    assert!(emu.http_url().starts_with("http://127.0.0.1:"));
    every_call_is_accepted(emu).await;
}

#[tokio::test]
async fn https_without_the_emulators_ca_is_refused_by_the_client() {
    let emu = https_emulator();
    let http = HttpTelemetry::builder(emu.api_token())
        .base_url(emu.http_url())
        .group_id(GROUP)
        .retries(0)
        .build()
        .unwrap();
    let err = http.publish_heartbeat("SN", APP, None).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::HttpConnect { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(http_records(&emu).len(), 0);
}

#[tokio::test]
async fn auto_compression_starts_just_over_1024_bytes_on_both_sides() {
    let emu = https_emulator();
    let http = sender(&emu).build().unwrap();
    let metric = |name_len: usize| [Metric::new("n".repeat(name_len), 1.0)];

    let probe = http.publish_metrics("SN", APP, &metric(10)).await.unwrap();
    assert!(!probe.compressed);
    // Each name byte is one JSON byte: this lands exactly on the threshold.
    let at_len = 10 + COMPRESSION_THRESHOLD - probe.json_len;

    let at = http
        .publish_metrics("SN", APP, &metric(at_len))
        .await
        .unwrap();
    assert_eq!(at.json_len, COMPRESSION_THRESHOLD);
    assert!(!at.compressed);
    assert_eq!(at.size, COMPRESSION_THRESHOLD);
    let rec = last_record(&emu);
    assert_eq!(rec.compressed, Some(false));
    assert_eq!(stored_bytes(&emu, &rec)[0], b'{');

    let over = http
        .publish_metrics("SN", APP, &metric(at_len + 1))
        .await
        .unwrap();
    assert_eq!(over.json_len, COMPRESSION_THRESHOLD + 1);
    assert!(over.compressed);
    assert!(over.size < over.json_len);
    let rec = last_record(&emu);
    assert!(rec.is_ok(), "{rec:?}");
    assert_eq!(rec.compressed, Some(true));
    assert_eq!(&stored_bytes(&emu, &rec)[..2], &[0x1f, 0x8b]);

    // Forced either way, on the same small body.
    let never = sender(&emu)
        .compression(Compression::Never)
        .build()
        .unwrap();
    let r = never
        .publish_metrics("SN", APP, &metric(at_len + 1))
        .await
        .unwrap();
    assert!(!r.compressed);
    assert_eq!(last_record(&emu).compressed, Some(false));
    let always = sender(&emu)
        .compression(Compression::Always)
        .build()
        .unwrap();
    let r = always.publish_metrics("SN", APP, &metric(1)).await.unwrap();
    assert!(r.compressed);
    assert_eq!(last_record(&emu).compressed, Some(true));
}

/// Metric names from a fixed pseudo-random sequence: gzip cannot shrink
/// them much, so the batch stays over 128 KiB compressed.
fn incompressible_batch() -> Vec<DeviceMetrics> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..2000)
        .map(|d| {
            let name: String = (0..100)
                .map(|_| {
                    char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(next() % 36) as usize])
                })
                .collect();
            DeviceMetrics::new(format!("SN-{d:05}"), vec![Metric::new(name, 1.0)])
        })
        .collect()
}

#[tokio::test]
async fn a_batch_still_over_128_kib_compressed_is_refused_locally() {
    let emu = https_emulator();
    let http = sender(&emu).build().unwrap();
    let err = http
        .publish_metrics_batch(APP, &incompressible_batch())
        .await
        .unwrap_err();
    match err.kind() {
        ErrorKind::PayloadTooLarge { size, limit } => {
            assert!(*size > MAX_MESSAGE_SIZE, "{size}");
            assert_eq!(*limit, MAX_MESSAGE_SIZE);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_invalid_input());
    assert_eq!(emu.http_requests(), 0, "nothing may reach the server");
}

#[tokio::test]
async fn a_batch_over_128_kib_of_json_that_compresses_under_it_goes_through() {
    let emu = https_emulator();
    let http = sender(&emu).build().unwrap();
    let devices: Vec<_> = (0..3000)
        .map(|d| DeviceMetrics::new(format!("SN-{d:05}"), vec![Metric::new("temperature", 20.0)]))
        .collect();
    let r = http.publish_metrics_batch(APP, &devices).await.unwrap();
    assert!(r.json_len > MAX_MESSAGE_SIZE && r.compressed && r.size <= MAX_MESSAGE_SIZE);
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-00000");
}

#[tokio::test]
async fn a_batch_with_an_empty_serial_is_refused_locally() {
    let emu = https_emulator();
    let http = sender(&emu).build().unwrap();
    let err = http
        .publish_metrics_batch(
            APP,
            &[
                DeviceMetrics::new("SN-1", vec![Metric::new("a", 1.0)]),
                DeviceMetrics::new("", vec![Metric::new("a", 1.0)]),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InvalidTelemetry(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("entry 1"), "{err}");
    let err = http.publish_events_batch(APP, &[]).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InvalidTelemetry(_)),
        "{err:?}"
    );
    assert_eq!(emu.http_requests(), 0);
}

#[tokio::test]
async fn a_wrong_token_gets_a_typed_401_with_the_servers_message_and_no_retry() {
    let emu = https_emulator();
    let http = HttpTelemetry::builder("ulg_not-the-right-one")
        .base_url(emu.http_url())
        .ca_file(&emu.certs().unwrap().ca_cert)
        .group_id(GROUP)
        .build()
        .unwrap();
    let err = http.publish_heartbeat("SN", APP, None).await.unwrap_err();
    match err.kind() {
        ErrorKind::HttpRefused {
            status,
            message,
            attempts,
        } => {
            assert_eq!(*status, 401);
            assert_eq!(message, "invalid API token");
            assert_eq!(*attempts, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.http_status(), Some(401));
    assert!(err.is_refusal() && !err.is_retryable());
    assert!(err.to_string().contains("ULOGGER_API_TOKEN"), "{err}");
    assert_eq!(emu.http_requests(), 1, "a 4xx is never retried");
    let rejected: Vec<_> = emu
        .records()
        .into_iter()
        .filter(|r| r.kind == RecordKind::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].reason.as_deref().unwrap().contains("401"));
    assert_eq!(http_records(&emu).len(), 0);
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let emu = https_emulator();
    let http = sender(&emu).retries(3).build().unwrap();
    emu.faults().fail_http_requests(2);
    let r = http.publish_heartbeat("SN-R", APP, None).await.unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(emu.http_requests(), 3);
    assert_eq!(http_records(&emu).len(), 1);
    assert_eq!(last_record(&emu).serial.as_deref(), Some("SN-R"));
}

#[tokio::test]
async fn server_errors_beyond_the_retries_are_reported_with_the_attempts() {
    let emu = https_emulator();
    let http = sender(&emu).retries(2).build().unwrap();
    emu.faults().fail_http_requests(10);
    let err = http.publish_heartbeat("SN", APP, None).await.unwrap_err();
    match err.kind() {
        ErrorKind::HttpRefused {
            status, attempts, ..
        } => {
            assert_eq!(*status, 500);
            assert_eq!(*attempts, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable() && !err.is_refusal());
    assert_eq!(err.http_status(), Some(500));
    assert!(err.to_string().contains("tried 3 times"), "{err}");
    assert_eq!(emu.http_requests(), 3);
    assert_eq!(http_records(&emu).len(), 0);
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let emu = https_emulator();
    // The backoff alone would retry after at most 10 ms.
    let http = sender(&emu)
        .max_backoff(Duration::from_millis(10))
        .build()
        .unwrap();
    emu.faults()
        .throttle_http_requests(1, Duration::from_secs(1));
    let started = Instant::now();
    let r = http.publish_heartbeat("SN-T", APP, None).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.attempts, 2);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert_eq!(http_records(&emu).len(), 1);

    // Capped by max_retry_after.
    let capped = sender(&emu)
        .max_retry_after(Duration::from_millis(50))
        .build()
        .unwrap();
    emu.faults()
        .throttle_http_requests(1, Duration::from_secs(3600));
    let started = Instant::now();
    let r = capped.publish_heartbeat("SN-T", APP, None).await.unwrap();
    assert_eq!(r.attempts, 2);
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A loopback port with nothing listening on it (held for the run).
fn closed_port() -> u16 {
    closed_addr().port()
}

#[tokio::test]
async fn connection_refused_is_a_typed_error_after_bounded_retries() {
    let http = HttpTelemetry::builder("ulg_x")
        .base_url(format!("http://127.0.0.1:{}", closed_port()))
        .group_id(GROUP)
        .retries(2)
        .max_backoff(Duration::from_millis(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = http.publish_heartbeat("SN", APP, None).await.unwrap_err();
    match err.kind() {
        ErrorKind::HttpConnect { url, attempts } => {
            assert!(url.ends_with("/publish/metrics"), "{url}");
            assert_eq!(*attempts, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    assert!(std::error::Error::source(&err).is_some());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_reply_that_is_not_json_is_a_typed_error_and_not_resent() {
    let emu = https_emulator();
    let http = sender(&emu).build().unwrap();
    emu.faults().garble_http_replies(1);
    let err = http.publish_heartbeat("SN", APP, None).await.unwrap_err();
    match err.kind() {
        ErrorKind::InvalidHttpReply { status, reason } => {
            assert_eq!(*status, 200);
            assert!(reason.contains("not JSON"), "{reason}");
            assert!(
                reason.contains("Service temporarily unavailable"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(emu.http_requests(), 1);
}

/// A `Write` into a shared buffer, for a tracing subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Everything runs on this thread (current-thread runtime), so the
/// thread's subscriber sees every line the library, reqwest and rustls
/// log at any level.
#[tokio::test]
async fn the_token_appears_in_no_log_line_error_or_debug_output() {
    let emu = https_emulator();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    // Also routes the `log` records of reqwest and rustls to it.
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);

    let good = emu.api_token().to_owned();
    let wrong = "ulg_wrongtoken0123456789";
    let http = sender(&emu).retries(1).build().unwrap();
    let mut shown = vec![format!("{http:?}"), format!("{:?}", sender(&emu))];

    http.publish_heartbeat("SN", APP, None).await.unwrap();
    emu.faults().fail_http_requests(5);
    let err = http.publish_heartbeat("SN", APP, None).await.unwrap_err();
    shown.push(format!("{err} {err:?}"));
    emu.faults().clear();

    let bad = HttpTelemetry::builder(wrong)
        .base_url(emu.http_url())
        .ca_file(&emu.certs().unwrap().ca_cert)
        .group_id(GROUP)
        .build()
        .unwrap();
    let err = bad.publish_heartbeat("SN", APP, None).await.unwrap_err();
    shown.push(format!("{err} {err:?} {bad:?}"));

    let unreachable = HttpTelemetry::builder(good.clone())
        .base_url(format!("http://127.0.0.1:{}", closed_port()))
        .group_id(GROUP)
        .retries(0)
        .build()
        .unwrap();
    let err = unreachable
        .publish_heartbeat("SN", APP, None)
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?} {unreachable:?}"));
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        shown.push(format!("{cause} {cause:?}"));
        source = cause.source();
    }

    let err = HttpTelemetry::builder(format!("{good} x"))
        .group_id(GROUP)
        .build()
        .unwrap_err();
    shown.push(format!("{err} {err:?}"));

    drop(_guard);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("telemetry accepted") && log.contains("retrying"),
        "the capture must hold the library's lines:\n{log}"
    );
    assert!(
        log.contains("reqwest::connect") && log.contains("rustls::"),
        "the capture must hold reqwest's and rustls' lines:\n{log}"
    );
    for text in shown.iter().chain(std::iter::once(&log)) {
        assert!(!text.contains(&good), "token leaked: {text}");
        assert!(!text.contains(wrong), "token leaked: {text}");
        assert!(!text.contains("wrongtoken"), "token leaked: {text}");
    }
    let _ = std::io::stderr().flush();
}

#[test]
fn the_blocking_twin_sends_every_call() {
    let emu = https_emulator();
    let certs = emu.certs().unwrap();
    let http = ulogger_cloud::blocking::HttpTelemetry::builder(emu.api_token())
        .base_url(emu.http_url())
        .ca_file(&certs.ca_cert)
        .group_id(GROUP)
        .compression(Compression::Auto)
        .retries(1)
        .max_backoff(Duration::from_millis(10))
        .max_retry_after(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = http
        .publish_metrics("SN-B", APP, &[Metric::new("v", 3.0)])
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-B");
    let r = http
        .publish_events("SN-B", APP, &[Event::new("e")])
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Events, "SN-B");
    let r = http.publish_heartbeat("SN-B", APP, None).unwrap();
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-B");
    let r = http
        .publish_metrics_batch(
            APP,
            &[DeviceMetrics::new("SN-C", vec![Metric::new("v", 1.0)])],
        )
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Metrics, "SN-C");
    let r = http
        .publish_events_batch(APP, &[DeviceEvents::new("SN-D", vec![Event::new("e")])])
        .unwrap();
    assert_recorded(&emu, &r, RecordKind::Events, "SN-D");
    assert_eq!(emu.http_requests(), 5);
}

#[test]
fn the_builder_names_what_is_wrong_and_takes_any_duration() {
    // The group defaults to 0, as over MQTT.
    assert!(HttpTelemetry::builder("ulg_x").build().is_ok());
    let err = HttpTelemetry::builder("").group_id(1).build().unwrap_err();
    assert!(err.to_string().contains("ULOGGER_API_TOKEN"), "{err}");
    for url in ["not a url", "ftp://example.com", "https://example.com/?q=1"] {
        let err = HttpTelemetry::builder("ulg_x")
            .group_id(1)
            .base_url(url)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("base_url"), "{url}: {err}");
        assert!(err.is_invalid_input());
    }
    let err = HttpTelemetry::builder("ulg_x")
        .group_id(1)
        .ca_file("/nonexistent/ca.pem")
        .build()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::File { .. }), "{err:?}");

    let emu = http_emulator();
    let http = ulogger_cloud::blocking::HttpTelemetry::builder(emu.api_token())
        .base_url(format!("{}/", emu.http_url()))
        .group_id(GROUP)
        .retries(u32::MAX)
        .max_backoff(Duration::MAX)
        .max_retry_after(Duration::MAX)
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    let r = http.publish_heartbeat("SN", APP, Some(u64::MAX)).unwrap();
    assert_eq!(r.attempts, 1);
    assert_eq!(r.url, format!("{}/publish/metrics", emu.http_url()));
}
